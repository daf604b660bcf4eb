//! A ragged batch (several sequences at different positions in one forward
//! pass) gives each sequence exactly the logits it gets when run alone.

use troupe_engine::{Engine, EngineOptions, Step};

fn engine() -> Engine {
    let path = troupe_hub::test_model("smollm2-135m");
    let opts = EngineOptions {
        n_ctx: 512,
        kv_positions: 1024,
        ..EngineOptions::default()
    };
    Engine::load(&path, opts).expect("load")
}

/// Runs `chunks` of tokens through one sequence alone; returns the logits
/// after each chunk.
fn alone(e: &mut Engine, chunks: &[&[u32]]) -> Vec<Vec<f32>> {
    let s = e.new_sequence();
    let out = chunks
        .iter()
        .map(|c| {
            e.step(&[Step {
                seq: s,
                tokens: c,
                logits: true,
                span: 0,
            }])
            .expect("step");
            e.logits(0).expect("logits").to_vec()
        })
        .collect();
    e.free_sequence(s);
    out
}

#[test]
fn ragged_batch_equals_sequences_run_alone() {
    let mut e = engine();
    let a: Vec<u32> = vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198];
    let b: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let c: Vec<u32> = vec![472, 585, 304];
    // Chunking of each sequence over three steps.
    let a_chunks: [&[u32]; 3] = [&a[..7], &a[7..11], &a[11..]];
    let b_chunks: [&[u32]; 3] = [&b[..1], &b[1..4], &b[4..]];
    let c_chunks: [&[u32]; 3] = [&c[..], &[], &[]];
    let want_a = alone(&mut e, &a_chunks);
    let want_b = alone(&mut e, &b_chunks);
    let want_c = alone(&mut e, &c_chunks[..1]);

    let (sa, sb, sc) = (e.new_sequence(), e.new_sequence(), e.new_sequence());
    for step in 0..3 {
        let steps = [
            Step {
                seq: sa,
                tokens: a_chunks[step],
                logits: true,
                span: 0,
            },
            Step {
                seq: sb,
                tokens: b_chunks[step],
                logits: true,
                span: 0,
            },
            Step {
                seq: sc,
                tokens: c_chunks[step],
                logits: true,
                span: 0,
            },
        ];
        e.step(&steps).expect("batched step");
        assert_eq!(
            e.logits(0).expect("a"),
            &want_a[step][..],
            "sequence a, step {step}"
        );
        assert_eq!(
            e.logits(1).expect("b"),
            &want_b[step][..],
            "sequence b, step {step}"
        );
        if step == 0 {
            assert_eq!(e.logits(2).expect("c"), &want_c[0][..]);
        } else {
            assert!(e.logits(2).is_none(), "no tokens, no logits");
        }
    }
    assert_eq!(e.seq_len(sa).expect("len"), a.len());
    assert_eq!(e.seq_len(sc).expect("len"), c.len());
}

#[test]
fn freed_blocks_are_reused_and_limits_are_errors() {
    let mut e = engine();
    let st = e.kv_stats();
    assert_eq!(st.available, st.n_blocks);
    let s = e.new_sequence();
    e.prefill(s, &[1; 100]).expect("prefill");
    assert_eq!(e.kv_stats().used, 100usize.div_ceil(st.block_size));
    e.free_sequence(s);
    assert_eq!(e.kv_stats().available, st.n_blocks);
    assert_eq!(e.kv_stats().used, 0);
    // Past the context: a clear error and nothing changes.
    let s = e.new_sequence();
    let err = e.prefill(s, &vec![1; 600]).expect_err("too long");
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(e.seq_len(s).expect("len"), 0);
    // A token outside the vocabulary is rejected, not read out of bounds.
    let err = e.prefill(s, &[u32::MAX]).expect_err("bad token");
    assert!(err.to_string().contains("vocabulary"), "{err}");
}
