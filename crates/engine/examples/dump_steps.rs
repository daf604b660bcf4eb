//! Debug aid: teacher-forced run that writes the logits of every step and
//! the intermediate activations of one step (for comparing with llama.cpp).
//! Usage: dump_steps MODEL OUT_DIR DUMP_STEP PROMPT_IDS FORCED_IDS
//! (ids comma-separated; FORCED_IDS may be `-`). Step 0 is the prompt.
use std::io::Write;
use troupe_engine::{Engine, EngineOptions, Step};

fn ids(s: &str) -> Result<Vec<u32>, std::num::ParseIntError> {
    if s == "-" {
        return Ok(Vec::new());
    }
    s.split(',').map(|x| x.parse()).collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(&a[2]);
    let dump_step: usize = a[3].parse()?;
    let (prompt, forced) = (ids(&a[4])?, ids(&a[5])?);
    let opts = EngineOptions {
        n_ctx: 2048,
        kv_positions: 2048,
        ..EngineOptions::default()
    };
    let mut e = Engine::load(std::path::Path::new(&a[1]), opts)?;
    let mut logits = std::fs::File::create(out.join("logits.f32"))?;
    let set = |step: usize| {
        troupe_models::debug::set_dump_dir((step == dump_step).then(|| out.clone()));
    };
    let seq = e.new_sequence();
    set(0);
    let first = e.prefill(seq, &prompt)?.to_vec();
    let mut write = |l: &[f32], step: usize| -> std::io::Result<()> {
        println!("step {step} argmax {}", argmax(l));
        let b: Vec<u8> = l.iter().flat_map(|v| v.to_le_bytes()).collect();
        logits.write_all(&b)
    };
    write(&first, 0)?;
    for (i, &t) in forced.iter().enumerate() {
        set(i + 1);
        e.step(&[Step {
            seq,
            tokens: &[t],
            logits: true,
            span: 0,
        }])?;
        write(e.logits(0).ok_or("no logits")?, i + 1)?;
    }
    set(usize::MAX);
    Ok(())
}
