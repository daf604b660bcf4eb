//! `troupe`: run GGUF chat models from the terminal. Flags follow
//! llama.cpp's where they exist (`-m`, `-p`, `-n`, `--temp`, `--top-k`, …).

mod alloc;
mod bench;
mod chat;
mod load;
mod serve;

use anyhow::Result;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use troupe_engine::sampler::SamplingParams;

#[derive(Parser)]
#[command(
    name = "troupe",
    version,
    about = "Troupe: self-hosted chat models on your own machines"
)]
struct Cli {
    /// Data directory (models live in DATA/models); default $TROUPE_DATA,
    /// then $XDG_DATA_HOME/troupe, then ~/.local/share/troupe.
    #[arg(long, global = true, value_name = "DIR", alias = "data")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; only the generated text goes to stdout.
    Generate(GenerateArgs),
    /// Chat interactively in the terminal (/exit or Ctrl-D to quit, Ctrl-C stops a reply).
    Chat(ChatArgs),
    /// Serve the OpenAI-compatible HTTP API (SIGTERM drains and exits).
    Serve(serve::ServeArgs),
    /// Print the token ids of TEXT as a JSON array, tokenized as a raw prompt.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        text: String,
    },
    /// Measure prefill and decode speed.
    Bench(bench::BenchArgs),
    /// Download a model from the catalog into the data directory.
    Pull {
        /// Catalog name (see `troupe models`).
        name: String,
        /// Re-hash an existing file and fetch it again if it is damaged.
        #[arg(long)]
        verify: bool,
    },
    /// List the model catalog and what is downloaded.
    Models,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Catalog name (pulled on first use) or path to a GGUF file.
    #[arg(short = 'm', long = "model", default_value = "smollm2-135m")]
    pub model: String,
    /// Threads (default: $TROUPE_THREADS or all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context size in tokens (capped by the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
}

/// Sampling flags; unset ones take a persona's defaults (`chat --persona`),
/// then the defaults shown.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy) [default: 0.8]
    #[arg(long = "temp")]
    temp: Option<f32>,
    /// [default: 40]
    #[arg(long = "top-k")]
    top_k: Option<usize>,
    /// [default: 0.95]
    #[arg(long = "top-p")]
    top_p: Option<f32>,
    /// [default: 0.05]
    #[arg(long = "min-p")]
    min_p: Option<f32>,
    /// [default: 1.0]
    #[arg(long = "repeat-penalty")]
    repeat_penalty: Option<f32>,
    /// [default: 0.0]
    #[arg(long = "presence-penalty")]
    presence_penalty: Option<f32>,
    /// [default: 0.0]
    #[arg(long = "frequency-penalty")]
    frequency_penalty: Option<f32>,
    /// Random seed (same seed and settings give the same text).
    #[arg(short = 's', long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        self.params_with(&troupe_personas::Sampling::default())
    }

    /// The flags, else `d`'s values, else the defaults.
    fn params_with(&self, d: &troupe_personas::Sampling) -> SamplingParams {
        SamplingParams {
            temperature: self.temp.or(d.temperature).unwrap_or(0.8),
            top_k: self
                .top_k
                .or(d.top_k.map(|k| k.max(0) as usize))
                .unwrap_or(40),
            top_p: self.top_p.or(d.top_p).unwrap_or(0.95),
            min_p: self.min_p.or(d.min_p).unwrap_or(0.05),
            repeat_penalty: self.repeat_penalty.or(d.repetition_penalty).unwrap_or(1.0),
            presence_penalty: self.presence_penalty.or(d.presence_penalty).unwrap_or(0.0),
            frequency_penalty: self
                .frequency_penalty
                .or(d.frequency_penalty)
                .unwrap_or(0.0),
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(short = 'p', long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    /// Use the prompt as is (plus BOS if the model asks for it) instead of
    /// rendering it as a user message with the chat template.
    #[arg(long)]
    raw: bool,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt (added to the persona's with --persona).
    #[arg(long)]
    system: Option<String>,
    /// Chat with a persona: a built-in id (`troupe chat --persona list`
    /// lists them) or a custom one from DATA/personas.
    #[arg(long)]
    persona: Option<String>,
    /// Your name, as personas address you.
    #[arg(long, default_value = "User")]
    user_name: String,
    /// Tokens per reply at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 1024)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let data = troupe_hub::data_dir(cli.data_dir.as_deref())?;
    match cli.cmd {
        Command::Generate(a) => generate(&data, a),
        Command::Chat(a) => chat::run(&data, a),
        Command::Serve(a) => serve::run(&data, a),
        Command::Tokenize { model, text } => {
            let path = load::resolve(&data, &model.model)?;
            let file = troupe_gguf::GgufFile::open(&path)?;
            let tok = troupe_tokenizer::Tokenizer::from_gguf(&file)?;
            let ids = tok.encode(&text, true, true);
            println!("{}", serde_json::to_string(&ids)?);
            Ok(())
        }
        Command::Bench(a) => bench::run(&data, a),
        Command::Pull { name, verify } => {
            let opts = troupe_hub::PullOptions {
                progress: true,
                verify,
                python: None,
            };
            let pulled = troupe_hub::pull(&name, &data, &opts)?;
            eprintln!(
                "{} {}",
                if pulled.downloaded {
                    "pulled"
                } else {
                    "already present:"
                },
                pulled.path.display()
            );
            Ok(())
        }
        Command::Models => {
            let cat = troupe_hub::Catalog::builtin()?;
            for m in &cat.models {
                let here = troupe_hub::model_path(&data, &m.name).exists();
                println!(
                    "{:<22} {:>6} MiB  {:<8} {:<7} {}{}",
                    m.name,
                    m.size / (1 << 20),
                    m.architecture,
                    m.quant,
                    m.description,
                    if here { "  [downloaded]" } else { "" }
                );
            }
            Ok(())
        }
    }
}

fn generate(data: &std::path::Path, a: GenerateArgs) -> Result<()> {
    let mut m = load::Loaded::open(data, &a.model)?;
    let prompt_ids = if a.raw {
        m.tok.encode(&a.prompt, true, true)
    } else {
        let text = m.template.render(
            &[troupe_tokenizer::chat::Message::new(
                "user",
                a.prompt.clone(),
            )],
            true,
        )?;
        m.encode_rendered(&text)
    };
    let params = troupe_engine::GenerateParams {
        max_tokens: a.n_predict,
        sampling: a.sampling.params(),
        stop: a.stop.clone(),
        stop_at_eog: true,
    };
    let seq = m.engine.new_sequence();
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let g = troupe_engine::generate(&mut m.engine, &m.tok, seq, &prompt_ids, &params, &mut |s| {
        let ok = lock
            .write_all(s.as_bytes())
            .and_then(|_| lock.flush())
            .is_ok();
        if ok {
            troupe_engine::Flow::Continue
        } else {
            troupe_engine::Flow::Stop
        }
    })?;
    // Only the generated text goes to a pipe; a terminal gets a final newline.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        writeln!(lock)?;
    }
    eprintln!(
        "[{} prompt tokens, {} generated, finish: {}; prefill {:.1} tok/s, decode {:.1} tok/s]",
        prompt_ids.len(),
        g.tokens.len(),
        g.finish.as_str(),
        g.prompt_evaluated as f64 / g.prefill_time.as_secs_f64().max(1e-9),
        g.tokens.len().saturating_sub(1) as f64 / g.decode_time.as_secs_f64().max(1e-9),
    );
    Ok(())
}
