//! Absurd counts must be refused before anything is sized from them: a
//! counting global allocator records the largest single allocation while
//! small hostile files are parsed. One test only, so no other test's
//! allocations run in this process at the same time.

mod common;

use common::{nested_array_bytes, put_u32, put_u64, sample, GgufWriter, TensorSpec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use troupe_gguf::{GgmlType, GgufFile};

/// Largest allocation allowed while parsing a file of under 4 KiB: the
/// reader may size buffers from counts, but only counts the file can hold.
const MAX_ALLOC: usize = 64 * 1024;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn hostile_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for n in [u64::MAX, u64::MAX / 24, 1 << 32, 1000] {
        let mut w = sample();
        w.tensor_count = Some(n);
        files.push((format!("tensor count {n}"), w.build()));
        let mut w = sample();
        w.kv_count = Some(n);
        files.push((format!("kv count {n}"), w.build()));
        for elem_ty in 0..=12u32 {
            let mut arr = Vec::new();
            put_u32(&mut arr, elem_ty);
            put_u64(&mut arr, n);
            arr.extend_from_slice(&[0; 64]);
            let w = GgufWriter::default().raw_kv(b"k", 9, arr);
            files.push((format!("array of type {elem_ty}, count {n}"), w.build()));
        }
        let mut s = Vec::new();
        put_u64(&mut s, n);
        s.extend_from_slice(&[b'x'; 64]);
        let w = GgufWriter::default().raw_kv(b"k", 8, s);
        files.push((format!("string length {n}"), w.build()));
    }
    let mut t = TensorSpec::new("t", &[1], GgmlType::F32);
    t.n_dims = Some(u32::MAX);
    files.push((
        "u32::MAX dims".into(),
        GgufWriter::default().tensor(t).build(),
    ));
    let t = TensorSpec::new("t", &[1 << 40, 1 << 20], GgmlType::Q4_0);
    files.push((
        "2^60 elements".into(),
        GgufWriter::default().tensor(t).build(),
    ));
    let w = GgufWriter::default().raw_kv(b"k", 9, nested_array_bytes(300));
    files.push(("300 nested arrays".into(), w.build()));
    // Nested arrays each announcing as many elements as could fit.
    let mut arr = Vec::new();
    for _ in 0..4 {
        put_u32(&mut arr, 9);
        put_u64(&mut arr, 300);
    }
    arr.extend_from_slice(&[0; 3600]);
    let w = GgufWriter::default().raw_kv(b"k", 9, arr);
    files.push(("wide nested arrays".into(), w.build()));
    files
}

/// Large files whose counts are as big as the file could hold, followed by
/// nothing that backs them: the reader must not size buffers from the count
/// alone (a multi-GB file would otherwise ask for several times its size).
fn large_hostile_files() -> Vec<(String, Vec<u8>)> {
    const LEN: usize = 64 << 20;
    let mut out = Vec::new();
    let mut w = GgufWriter::default().kv("k", troupe_gguf::Value::U8(1));
    w.kv_count = Some((LEN as u64 - 100) / 13);
    out.push(("kv count with nothing behind it".to_string(), w.build()));
    let w = GgufWriter {
        tensor_count: Some((LEN as u64 - 100) / 24),
        ..GgufWriter::default()
    };
    out.push(("tensor count with nothing behind it".to_string(), w.build()));
    for elem_ty in [8u32, 9] {
        let mut arr = Vec::new();
        put_u32(&mut arr, elem_ty);
        put_u64(&mut arr, (LEN as u64 - 100) / 12);
        let w = GgufWriter::default().raw_kv(b"k", 9, arr);
        out.push((
            format!("array of type {elem_ty} with nothing behind it"),
            w.build(),
        ));
    }
    for (_, bytes) in &mut out {
        // 0xff bytes: the next length read is u64::MAX, an error at once.
        bytes.resize(LEN, 0xff);
    }
    out
}

/// Largest allocation allowed while parsing a 64 MiB hostile file.
const MAX_ALLOC_LARGE: usize = 8 << 20;

#[test]
fn absurd_counts_never_allocate_much() {
    // The allocator is really hooked.
    LARGEST.store(0, Ordering::Relaxed);
    drop(std::hint::black_box(vec![0u8; 1 << 20]));
    assert!(LARGEST.load(Ordering::Relaxed) >= 1 << 20);

    let mut too_big = Vec::new();
    for (what, bytes) in large_hostile_files() {
        LARGEST.store(0, Ordering::Relaxed);
        let ok = GgufFile::from_bytes(bytes).is_ok();
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(!ok, "{what}: parsed");
        if largest > MAX_ALLOC_LARGE {
            too_big.push(format!("{what}: an allocation of {largest} bytes"));
        }
    }
    assert!(too_big.is_empty(), "{too_big:#?}");

    let files = hostile_files();
    for (what, bytes) in files {
        assert!(bytes.len() < 4096, "{what}: test file too big");
        LARGEST.store(0, Ordering::Relaxed);
        let ok = GgufFile::from_bytes(bytes).is_ok();
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(!ok, "{what}: parsed");
        assert!(
            largest <= MAX_ALLOC,
            "{what}: an allocation of {largest} bytes"
        );
    }
}
