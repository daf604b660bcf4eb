//! `troupe bench`: prefill and decode throughput, median of repetitions,
//! in the shape of llama-bench's pp/tg tests.

use crate::ModelArgs;
use anyhow::Result;
use clap::Args;
use std::path::Path;
use std::time::Instant;
use troupe_engine::Step;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens of the decode test.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Sequences decoding together in the decode test (each forward pass
    /// carries one token of each; tok/s counts all of them), as a server
    /// with that many streams does.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure memory read bandwidth instead (GB/s over a 1 GiB buffer,
    /// with --threads threads), the ceiling of decode speed.
    #[arg(long)]
    memory_bandwidth: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Read bandwidth: every thread sums its share of a 1 GiB buffer.
fn memory_bandwidth(a: &BenchArgs) -> Result<()> {
    const BYTES: usize = 1 << 30;
    let threads = a
        .model
        .threads
        .unwrap_or_else(troupe_kernels::pool::default_threads);
    let pool = troupe_kernels::pool::ThreadPool::new(threads);
    let buf: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let mut runs = Vec::new();
    for rep in 0..=a.reps.max(1) {
        let t = Instant::now();
        let total = std::sync::atomic::AtomicU64::new(0);
        pool.for_ranges(buf.len(), 1 << 16, |r| {
            // Eight independent sums, so the loads are not one dependency chain.
            let mut acc = [0u64; 8];
            for c in buf[r].chunks_exact(8) {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a = a.wrapping_add(x);
                }
            }
            let s = acc.iter().fold(0u64, |s, &x| s.wrapping_add(x));
            total.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(total.into_inner());
        let gbs = BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
        if rep > 0 {
            runs.push(gbs);
        }
    }
    let runs_copy = runs.clone();
    let gbs = median(&mut runs);
    if a.json {
        let v = serde_json::json!({
            "threads": pool.n_threads(),
            "read_gb_s": gbs,
            "runs": runs_copy,
        });
        println!("{v}");
    } else {
        println!(
            "memory read bandwidth, {} threads: {gbs:.1} GB/s",
            pool.n_threads()
        );
    }
    Ok(())
}

pub fn run(data: &Path, a: BenchArgs) -> Result<()> {
    if a.memory_bandwidth {
        return memory_bandwidth(&a);
    }
    let mut margs = a.model.clone();
    margs.ctx_size = margs.ctx_size.max(a.prompt_tokens + a.gen_tokens + 1);
    let batch = a.batch.max(1);
    let mut m = crate::load::Loaded::open_with(data, &margs, |o| {
        o.kv_positions = o.n_ctx.max(batch * (a.gen_tokens + 16));
        o.max_batch_tokens = o.max_batch_tokens.max(batch);
    })?;
    let n_vocab = m.engine.config().n_vocab as u64;
    // Deterministic pseudo-random tokens, like llama-bench's.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut tokens = Vec::with_capacity(a.prompt_tokens);
    for _ in 0..a.prompt_tokens {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokens.push((x % n_vocab) as u32);
    }
    let reps = a.reps.max(1);
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    // Allocation calls inside the engine's decode steps (sampling here is
    // a plain argmax), after the warm-up repetition.
    let (mut decode_allocs, mut decode_steps) = (0u64, 0u64);
    // One warm-up of each test, not counted.
    for rep in 0..=reps {
        let seq = m.engine.new_sequence();
        let t = Instant::now();
        m.engine.prefill(seq, &tokens)?;
        let pp_s = t.elapsed().as_secs_f64();
        m.engine.free_sequence(seq);

        let seqs: Vec<_> = (0..batch).map(|_| m.engine.new_sequence()).collect();
        let mut next: Vec<[u32; 1]> = (0..batch).map(|i| [tokens[i % tokens.len()]]).collect();
        let t = Instant::now();
        for _ in 0..a.gen_tokens {
            let steps: Vec<Step> = seqs
                .iter()
                .zip(&next)
                .map(|(&seq, tok)| Step {
                    seq,
                    tokens: tok,
                    logits: true,
                    span: 0,
                })
                .collect();
            let before = crate::alloc::calls();
            m.engine.step(&steps)?;
            for (i, n) in next.iter_mut().enumerate() {
                let l = m.engine.logits(i).unwrap_or(&[]);
                n[0] = l
                    .iter()
                    .enumerate()
                    .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                    .0 as u32;
            }
            if rep > 0 {
                decode_allocs += crate::alloc::calls() - before;
                decode_steps += 1;
            }
        }
        let tg_s = t.elapsed().as_secs_f64() / batch as f64;
        for s in seqs {
            m.engine.free_sequence(s);
        }
        if rep > 0 {
            pp.push(a.prompt_tokens as f64 / pp_s);
            tg.push(a.gen_tokens as f64 / tg_s);
        }
        if !a.json {
            eprintln!(
                "{} pp{} {:.1} tok/s, tg{} {:.1} tok/s",
                if rep == 0 { "warm-up" } else { "rep" },
                a.prompt_tokens,
                a.prompt_tokens as f64 / pp_s,
                a.gen_tokens,
                a.gen_tokens as f64 / tg_s
            );
        }
    }
    let (pp_runs, tg_runs) = (pp.clone(), tg.clone());
    let prefill = median(&mut pp);
    let decode = median(&mut tg);
    let model = m
        .path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let file_bytes = std::fs::metadata(&m.path).map(|md| md.len()).unwrap_or(0);
    let kv_bytes = m.engine.kv_bytes() as u64;
    let peak = crate::alloc::peak_rss().unwrap_or(0);
    let allocs_per_step = decode_allocs as f64 / decode_steps.max(1) as f64;
    if a.json {
        let v = serde_json::json!({
            "model": model,
            "threads": m.engine.n_threads(),
            "isa": troupe_kernels::cpu::best().name(),
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "batch": batch,
            "reps": reps,
            "prefill_tok_s": prefill,
            "decode_tok_s": decode,
            "prefill_runs": pp_runs,
            "decode_runs": tg_runs,
            "peak_rss_mib": mib(peak),
            "model_file_mib": mib(file_bytes),
            "kv_cache_mib": mib(kv_bytes),
            "rss_over_model_and_kv_mib": mib(peak) - mib(file_bytes) - mib(kv_bytes),
            "decode_allocs_per_step": allocs_per_step,
        });
        println!("{v}");
    } else {
        println!("| model | threads | test | tok/s (median of {reps}) |");
        println!("|---|---|---|---|");
        println!(
            "| {model} | {} | pp{} | {prefill:.1} |",
            m.engine.n_threads(),
            a.prompt_tokens
        );
        println!(
            "| {model} | {} | tg{} | {decode:.1} |",
            m.engine.n_threads(),
            a.gen_tokens
        );
        println!(
            "peak RSS {:.1} MiB = model file {:.1} + KV cache {:.1} + {:.1} MiB; \
             allocations per decode step: {allocs_per_step:.2}",
            mib(peak),
            mib(file_bytes),
            mib(kv_bytes),
            mib(peak) - mib(file_bytes) - mib(kv_bytes)
        );
    }
    Ok(())
}
