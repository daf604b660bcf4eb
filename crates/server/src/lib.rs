//! `troupe serve`: an OpenAI-compatible HTTP API over one engine loop.
//!
//! The engine runs on its own thread (the [`Scheduler`] loop); HTTP handlers
//! render and tokenize prompts, check limits, submit requests over a
//! channel and turn the events that come back into JSON or SSE. Nothing here
//! runs model code, so a slow or hostile client cannot stall the loop.

mod api;
mod conversations;
mod errors;
mod generation;
mod history;
mod metrics;
mod personas;
mod state;
mod ui;

pub use state::{ServerConfig, ServerModel};

use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_engine::scheduler::{Command, Scheduler, SchedulerOptions};

/// Runs the server until SIGTERM or SIGINT, then drains: `/ready` fails at
/// once, new requests get 503, running requests get up to
/// `config.drain_timeout` to finish (then they end with an error event) and
/// the function returns.
pub async fn serve(model: ServerModel, config: ServerConfig) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    serve_on(listener, model, config).await
}

/// [`serve`] on a listener the caller bound (tests use port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    model: ServerModel,
    config: ServerConfig,
) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ServerModel {
        engine,
        tokenizer,
        template,
        id,
    } = model;
    let n_ctx = engine.n_ctx();
    let scheduler = Scheduler::new(
        engine,
        tokenizer.clone(),
        SchedulerOptions {
            max_running: config.max_concurrent,
            prefill_chunk: config.prefill_chunk,
            step_target: config.step_target,
            pin_budget_blocks: None,
        },
    );
    let stats = scheduler.stats();
    let engine_thread = std::thread::Builder::new()
        .name("troupe-engine".into())
        .spawn(move || scheduler.run(rx))?;
    let state = Arc::new(state::AppState::new(
        id, tokenizer, template, n_ctx, tx, stats, &config,
    ));
    let app: Router = api::router(state.clone(), &config);
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr}");
    eprintln!("troupe: serving {} on http://{addr}", state.model_id);

    let drain_state = state.clone();
    let drain_timeout = config.drain_timeout;
    let shutdown = async move {
        wait_for_signal().await;
        drain(&drain_state, drain_timeout).await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    state.send(Command::Shutdown);
    // The engine finishes whatever is left (nothing, after the drain).
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    eprintln!("troupe: stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Refuses new work, waits for running requests up to `timeout`, then cuts
/// the rest off with an error event.
async fn drain(state: &state::AppState, timeout: Duration) {
    state.draining.store(true, Ordering::SeqCst);
    let n = state.in_flight.load(Ordering::SeqCst);
    eprintln!("troupe: draining ({n} requests in flight, up to {timeout:?})");
    let deadline = Instant::now() + timeout;
    while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if state.in_flight.load(Ordering::SeqCst) > 0 {
        state.send(Command::AbortAll(
            "the server is shutting down; the reply was cut off".into(),
        ));
        let grace = Instant::now() + Duration::from_secs(2);
        while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
