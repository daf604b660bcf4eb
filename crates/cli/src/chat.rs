//! `troupe chat`: an interactive conversation in the terminal.
//!
//! The KV cache of the conversation is kept between turns: each turn renders
//! the whole history with the chat template, and only the tokens after the
//! longest prefix already in the cache are evaluated.

use crate::load::Loaded;
use crate::ChatArgs;
use anyhow::Result;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use troupe_engine::{Flow, GenerateParams};
use troupe_personas::Persona;
use troupe_tokenizer::chat::Message;

/// Set by SIGINT; polled between tokens.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Whether a reply is being generated (otherwise Ctrl-C quits).
static GENERATING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if GENERATING.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // Only async-signal-safe calls here.
        unsafe { libc::_exit(130) };
    }
}

fn install_sigint() {
    #[cfg(unix)]
    // SAFETY: the handler only touches atomics and calls `_exit`.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// A built-in persona, or a custom one saved by `troupe serve`.
fn find_persona(data: &Path, id: &str) -> Result<Persona> {
    let all = troupe_personas::builtin()?;
    if let Some(p) = all.iter().find(|p| p.id == id) {
        return Ok(p.clone());
    }
    let custom = data.join("personas").join(format!("{id}.toml"));
    if troupe_personas::valid_id(id) && custom.is_file() {
        let text = std::fs::read_to_string(&custom)?;
        return Ok(Persona::from_toml(&text)?);
    }
    let ids: Vec<&str> = all.iter().map(|p| p.id.as_str()).collect();
    anyhow::bail!("no persona `{id}`; built-in ones: {}", ids.join(", "))
}

fn list_personas() -> Result<()> {
    for p in troupe_personas::builtin()? {
        println!("{:<20} {:<22} {}", p.id, p.name, p.tagline);
    }
    Ok(())
}

pub fn run(data: &Path, a: ChatArgs) -> Result<()> {
    if a.persona.as_deref() == Some("list") {
        return list_personas();
    }
    let persona = a
        .persona
        .as_deref()
        .map(|id| find_persona(data, id))
        .transpose()?;
    let mut m = Loaded::open(data, &a.model)?;
    install_sigint();
    let mut history: Vec<Message> = match &persona {
        Some(p) => {
            let extra: Vec<&str> = a.system.iter().map(String::as_str).collect();
            p.block_before(&a.user_name, &extra, false)
                .into_iter()
                .map(|t| Message::new(t.role.as_str(), t.content))
                .collect()
        }
        None => a
            .system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect(),
    };
    // `/reset` goes back to this (the persona block).
    let start = history.clone();
    let seq = m.engine.new_sequence();
    let mut cached: Vec<u32> = Vec::new();
    let sampling = match &persona {
        Some(p) => a.sampling.params_with(&p.sampling),
        None => a.sampling.params(),
    };
    let params = GenerateParams {
        max_tokens: a.n_predict,
        sampling,
        stop: Vec::new(),
        stop_at_eog: true,
    };
    eprintln!(
        "chatting with {} — /exit or Ctrl-D to quit, Ctrl-C stops a reply, /reset clears history",
        match &persona {
            Some(p) => format!("{} ({})", p.name, m.path.display()),
            None => m.path.display().to_string(),
        }
    );
    if let Some(g) = persona
        .as_ref()
        .and_then(|p| p.greeting_for(&a.user_name, 0))
    {
        println!("{g}");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else {
            eprintln!();
            break;
        };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = start.clone();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", input.to_string()));
        let text = match m.template.render(&history, true) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
                continue;
            }
        };
        let ids = m.encode_rendered(&text);
        if ids.len() + 1 >= m.engine.n_ctx() {
            eprintln!("error: the conversation no longer fits the context ({} tokens); /reset to start over", ids.len());
            history.pop();
            continue;
        }
        // Reuse the cached prefix.
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        m.engine.truncate(seq, common)?;
        INTERRUPTED.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let result = troupe_engine::generate(&mut m.engine, &m.tok, seq, &ids, &params, &mut |s| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
            if INTERRUPTED.load(Ordering::SeqCst) {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        GENERATING.store(false, Ordering::SeqCst);
        writeln!(out)?;
        drop(out);
        match result {
            Ok(g) => {
                if g.finish == troupe_engine::FinishReason::Cancelled {
                    eprintln!("(stopped)");
                }
                // The cache now holds the prompt and all generated tokens but
                // the last sampled one.
                cached = ids;
                cached.extend_from_slice(&g.tokens[..g.tokens.len().saturating_sub(1)]);
                let len = m.engine.seq_len(seq)?;
                cached.truncate(len);
                history.push(Message::new("assistant", g.text));
            }
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
                m.engine.truncate(seq, 0)?;
                cached.clear();
            }
        }
    }
    Ok(())
}
