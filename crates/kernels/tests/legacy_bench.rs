//! Single-thread `vec_dot` throughput of the legacy formats, in GB/s of
//! weight bytes, for every ISA this CPU supports. Not a test (ignored):
//!
//! ```text
//! cargo test --release -p troupe-kernels --test legacy_bench -- --ignored --nocapture
//! ```
//!
//! Prints a table and one JSON object per measurement (`"bench":
//! "legacy_vec_dot"`). "cache" rows fit in L2; "memory" rows stream 64 MiB
//! of weights, more than a typical L3. Besides wall-clock GB/s it reports
//! GB per second of this thread's CPU time (Linux `schedstat`), which stays
//! meaningful on a loaded machine.

mod legacy_util;

use legacy_util::{quantize, random_blocks, Rng};
use std::time::Instant;
use troupe_kernels::{ops_for, reference_ops, GgmlType, Isa};

/// Row length (elements), a typical hidden size.
const N: usize = 4096;
/// Minimum timed duration per measurement.
const MIN_SECS: f64 = 0.25;

/// Nanoseconds this thread has spent on a CPU, where Linux tells.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn legacy_vec_dot_throughput() {
    let mut rng = Rng::new(0xbe4c);
    let formats = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ];
    println!(
        "{:<6} {:<12} {:<7} {:>9} {:>11} {:>10}",
        "format", "isa", "set", "GB/s", "GB/cpu-s", "cpu-ns/row"
    );
    let mut json = Vec::new();
    for ty in formats {
        let rb = ty.row_bytes(N).expect("whole blocks");
        let pattern = random_blocks(&mut rng, ty, N * 8);
        let a = quantize(reference_ops(ty).vec_dot_type, &rng.normals(N));
        for (set, bytes) in [("cache", 256 << 10), ("memory", 64 << 20)] {
            let rows = (bytes / rb).max(1);
            let w: Vec<u8> = pattern.iter().copied().cycle().take(rows * rb).collect();
            for isa in Isa::all_supported() {
                let dot = ops_for(ty, isa).vec_dot;
                let mut sink = 0.0f32;
                let mut passes = 0usize;
                let cpu0 = thread_cpu_ns();
                let start = Instant::now();
                while passes == 0 || start.elapsed().as_secs_f64() < MIN_SECS {
                    for row in w.chunks_exact(rb) {
                        sink += dot(N, row, &a);
                    }
                    passes += 1;
                }
                let secs = start.elapsed().as_secs_f64();
                let cpu_secs = match (cpu0, thread_cpu_ns()) {
                    (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
                    _ => secs,
                };
                std::hint::black_box(sink);
                let bytes = (passes * rows * rb) as f64;
                let (gbs, gb_cpu) = (bytes / secs / 1e9, bytes / cpu_secs / 1e9);
                let ns_row = cpu_secs * 1e9 / (passes * rows) as f64;
                println!(
                    "{:<6} {:<12} {:<7} {gbs:>9.2} {gb_cpu:>11.2} {ns_row:>10.1}",
                    ty.name(),
                    isa.name(),
                    set
                );
                json.push(format!(
                    "{{\"bench\":\"legacy_vec_dot\",\"format\":\"{}\",\"isa\":\"{}\",\"set\":\"{set}\",\"n\":{N},\"rows\":{rows},\"gb_per_s\":{gbs:.3},\"gb_per_cpu_s\":{gb_cpu:.3},\"cpu_ns_per_row\":{ns_row:.1}}}",
                    ty.name(),
                    isa.name()
                ));
            }
        }
    }
    for line in json {
        println!("{line}");
    }
}
