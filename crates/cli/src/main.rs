//! `troupe`: run GGUF chat models from the terminal. Flags follow
//! llama.cpp's where they exist (`-m`, `-p`, `-n`, `--temp`, `--top-k`, …).

mod bench;
mod chat;
mod load;
mod serve;

use anyhow::Result;
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

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed (same seed and settings give the same text).
    #[arg(short = 's', long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
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
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
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
