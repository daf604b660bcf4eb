//! Prefix caching on the real model: a cached prefix gives the same logits
//! as computing it, shared blocks are never overwritten, and cached blocks
//! give way when space is needed.

use troupe_engine::{Engine, EngineOptions, SeqId, Step};

fn engine(kv_positions: usize) -> Engine {
    let path = troupe_hub::test_model("smollm2-135m");
    let opts = EngineOptions {
        n_ctx: 512,
        kv_positions,
        ..EngineOptions::default()
    };
    Engine::load(&path, opts).expect("load")
}

/// A prompt of `n` ordinary token ids that varies with `salt`.
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 300 + (i * 37 + salt * 101) % 20_000)
        .collect()
}

/// Feeds `tokens` as the tail of a run of `span` tokens; returns the logits.
fn feed(e: &mut Engine, s: SeqId, tokens: &[u32], span: usize) -> Vec<f32> {
    e.step(&[Step {
        seq: s,
        tokens,
        logits: true,
        span,
    }])
    .expect("step");
    e.logits(0).expect("logits").to_vec()
}

#[test]
fn cached_prefix_gives_identical_logits() {
    let mut e = engine(1024);
    let bs = e.kv_stats().block_size;
    for len in [40usize, 100, 161] {
        let p = prompt(len, len as u32);
        let a = e.new_sequence();
        assert_eq!(e.attach_prefix(a, &p).expect("attach"), 0, "cold cache");
        let fresh = feed(&mut e, a, &p, p.len());
        e.free_sequence(a);

        let b = e.new_sequence();
        let hit = e.attach_prefix(b, &p).expect("attach");
        assert_eq!(hit, (len - 1) / bs * bs, "whole blocks, last token left");
        assert_eq!(e.seq_len(b).expect("len"), hit);
        let cached = feed(&mut e, b, &p[hit..], p.len());
        assert_eq!(fresh, cached, "len {len}: cached prefix changed the logits");
        e.free_sequence(b);
    }
}

#[test]
fn sequences_share_prefix_blocks_and_copy_on_write() {
    let mut e = engine(1024);
    let bs = e.kv_stats().block_size;
    let p = prompt(100, 1);
    let a = e.new_sequence();
    let logits_a = feed(&mut e, a, &p, p.len());
    let used_a = e.kv_stats().used;
    assert_eq!(used_a, 100usize.div_ceil(bs));

    // B shares A's six full blocks and only adds its own tail.
    let b = e.new_sequence();
    let hit = e.attach_prefix(b, &p).expect("attach");
    assert_eq!(hit, 96);
    assert_eq!(e.kv_stats().used, used_a, "shared blocks are not copied");
    feed(&mut e, b, &p[hit..], p.len());
    assert_eq!(e.kv_stats().used, used_a + 1);

    // Rewinding B into a shared block copies it before B writes there.
    e.truncate(b, 90).expect("truncate");
    let other = prompt(30, 9);
    feed(&mut e, b, &other, other.len());

    // A's cache is intact: its next token sees the same past as before.
    let next = [p[0]];
    let after = feed(&mut e, a, &next, 1);
    let c = e.new_sequence();
    let mut p2 = p.clone();
    p2.push(next[0]);
    // Compute A's continuation from scratch for comparison.
    let c_hit = e.attach_prefix(c, &p2).expect("attach");
    let fresh = {
        let _ = feed(&mut e, c, &p2[c_hit..p.len()], p.len());
        feed(&mut e, c, &next, 1)
    };
    assert_eq!(after, fresh, "a shared block was overwritten");
    assert_eq!(logits_a.len(), after.len());
    for s in [a, b, c] {
        e.free_sequence(s);
    }
    assert_eq!(e.kv_stats().used, 0);
}

#[test]
fn cached_blocks_are_evicted_when_space_is_needed() {
    // Room for exactly 32 blocks of 16 positions.
    let mut e = engine(512);
    let st = e.kv_stats();
    let p = prompt(200, 3);
    let a = e.new_sequence();
    feed(&mut e, a, &p, p.len());
    e.free_sequence(a);
    let idle = e.kv_stats().cached_idle;
    assert_eq!(idle, 200 / st.block_size, "full blocks stay cached");
    assert_eq!(e.kv_stats().available, st.n_blocks);

    // A long unrelated prompt needs the cached blocks' space.
    let q = prompt(500, 4);
    let b = e.new_sequence();
    e.prefill(b, &q).expect("prefill evicts cached blocks");
    e.free_sequence(b);
    let c = e.new_sequence();
    let hit = e.attach_prefix(c, &p).expect("attach");
    assert!(hit < 192, "evicted blocks must not be found ({hit} cached)");
    e.free_sequence(c);
}
