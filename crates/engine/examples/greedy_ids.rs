//! Debug aid: greedy continuation of a list of token ids.
//! Usage: greedy_ids MODEL N ID [ID...]
use troupe_engine::{Engine, EngineOptions};

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args[2].parse()?;
    let ids: Vec<u32> = args[3..]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let mut e = Engine::load(std::path::Path::new(&args[1]), EngineOptions::default())?;
    let seq = e.new_sequence();
    let t0 = std::time::Instant::now();
    let mut next = argmax(e.prefill(seq, &ids)?);
    let t1 = std::time::Instant::now();
    let mut out = vec![next];
    for _ in 1..n {
        e.step(&[troupe_engine::Step {
            seq,
            tokens: &[next],
            logits: true,
            span: 0,
        }])?;
        next = argmax(e.logits(0).ok_or("no logits")?);
        out.push(next);
    }
    let t2 = std::time::Instant::now();
    println!("{out:?}");
    eprintln!(
        "prefill {} tok in {:?}, decode {} tok in {:?}",
        ids.len(),
        t1 - t0,
        n - 1,
        t2 - t1
    );
    Ok(())
}
