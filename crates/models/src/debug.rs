//! Debug aid: dumps intermediate activations to files, for comparing with
//! llama.cpp tensor by tensor. Off unless [`set_dump_dir`] was called (the
//! check is one relaxed atomic load per dumped tensor, a few per layer).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

static ON: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Dumps every following forward pass's activations into `dir` (as
/// `NNNN_<name>-<layer>.f32`, little-endian f32, plus `index.tsv`), or
/// stops dumping with `None`.
pub fn set_dump_dir(dir: Option<PathBuf>) {
    let on = dir.is_some();
    *DIR.lock().unwrap_or_else(|e| e.into_inner()) = dir;
    COUNT.store(0, Ordering::Relaxed);
    ON.store(on, Ordering::Relaxed);
}

/// Writes `data` as tensor `name` of layer `il` (`usize::MAX`: no layer).
#[inline]
pub(crate) fn dump(name: &str, il: usize, data: &[f32]) {
    if ON.load(Ordering::Relaxed) {
        dump_slow(name, il, data);
    }
}

#[cold]
fn dump_slow(name: &str, il: usize, data: &[f32]) {
    use std::io::Write;
    let guard = DIR.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dir) = guard.as_ref() else { return };
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let full = if il == usize::MAX {
        name.to_string()
    } else {
        format!("{name}-{il}")
    };
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let _ = std::fs::write(dir.join(format!("{n:04}_{full}.f32")), bytes);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("index.tsv"))
    {
        let _ = writeln!(f, "{n:04}\t{full}\t{}", data.len());
    }
}
