//! Where models live: the data directory and the file name of each model.
//!
//! Precedence: an explicit path (the `--data-dir` flag) > `$TROUPE_DATA` >
//! `$XDG_DATA_HOME/troupe` > `$HOME/.local/share/troupe`, following the XDG
//! Base Directory spec (an empty or relative `$XDG_DATA_HOME` is ignored).

use crate::{HubError, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The data directory, reading the process environment.
pub fn data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    data_dir_with(explicit, |k| std::env::var_os(k))
}

/// [`data_dir`] with the environment supplied by `env` (for tests and
/// embedders). Empty variables count as unset.
pub fn data_dir_with(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("TROUPE_DATA") {
        return Ok(p);
    }
    if let Some(p) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Ok(p.join("troupe"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".local").join("share").join("troupe"));
    }
    Err(HubError::NoDataDir)
}

/// `<data>/models`.
pub fn models_dir(data: &Path) -> PathBuf {
    data.join("models")
}

/// `<data>/models/<name>.gguf`.
pub fn model_path(data: &Path, name: &str) -> PathBuf {
    models_dir(data).join(format!("{name}.gguf"))
}

/// A model file for tests of other crates: `$TROUPE_TEST_MODELS/<name>.gguf`
/// when that variable is set, else `<data>/models/<name>.gguf`.
///
/// # Panics
/// When the file is absent, with a message saying how to get it: tests that
/// need a real model must fail, not skip, when it is missing.
pub fn test_model(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TROUPE_TEST_MODELS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match data_dir(None) {
            Ok(data) => models_dir(&data),
            Err(e) => panic!("test model {name}: {e}"),
        },
    };
    let path = dir.join(format!("{name}.gguf"));
    if !path.is_file() {
        panic!(
            "test model {name} not found at {}: run `troupe pull {name}` \
             (or point $TROUPE_TEST_MODELS at a folder holding {name}.gguf)",
            path.display()
        );
    }
    path
}
