//! `Sampler::sample` does not allocate once its buffers are warm: a counting
//! global allocator watches a run of calls. One test in this binary, so no
//! other test thread allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use troupe_engine::sampler::{Sampler, SamplingParams};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sample_does_not_allocate_in_steady_state() {
    const VOCAB: usize = 32_000;
    let logits: Vec<f32> = (0..VOCAB)
        .map(|i| ((i * 7_919) % 1_000) as f32 / 100.0)
        .collect();
    let history: Vec<u32> = (0..200).map(|i| (i * 37 % VOCAB) as u32).collect();
    let chains = [
        SamplingParams::default(),
        SamplingParams {
            top_k: 0,
            min_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            repeat_penalty: 1.1,
            frequency_penalty: 0.2,
            ..SamplingParams::default()
        },
        SamplingParams {
            repeat_penalty: 1.1,
            repeat_last_n: -1,
            ..SamplingParams::greedy()
        },
    ];
    for params in chains {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(5),
            ..params
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // warm-up: buffers reach their working size
        s.sample(&logits, &history);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut sum = 0u64;
        for step in 0..50 {
            sum += u64::from(s.sample(&logits, &history[..150 + step]));
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{params:?} allocated (sum {sum})");
    }
}
