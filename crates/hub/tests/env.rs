//! The real process environment: `data_dir` and `test_model` read it. This
//! file holds a single test so nothing else in its process reads the
//! environment while it changes it.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};
use troupe_hub::{data_dir, test_model};

const VARS: [&str; 4] = ["TROUPE_DATA", "XDG_DATA_HOME", "HOME", "TROUPE_TEST_MODELS"];

#[test]
fn environment_precedence_and_test_models() {
    let saved: Vec<_> = VARS.iter().map(|k| (*k, std::env::var_os(k))).collect();
    for k in VARS {
        std::env::remove_var(k);
    }

    std::env::set_var("HOME", "/home/u");
    assert_eq!(
        data_dir(None).ok(),
        Some(PathBuf::from("/home/u/.local/share/troupe"))
    );
    std::env::set_var("XDG_DATA_HOME", "/xdg");
    assert_eq!(data_dir(None).ok(), Some(PathBuf::from("/xdg/troupe")));
    std::env::set_var("TROUPE_DATA", "/data");
    assert_eq!(data_dir(None).ok(), Some(PathBuf::from("/data")));
    assert_eq!(
        data_dir(Some(Path::new("/flag"))).ok(),
        Some(PathBuf::from("/flag"))
    );

    // test_model: $TROUPE_TEST_MODELS first, else <data>/models; absent
    // models panic with the command that fetches them.
    let tmp = TempDir::new("env");
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::fs::write(models.join("tiny.gguf"), b"GGUF").expect("write");
    std::env::set_var("TROUPE_DATA", tmp.path());
    assert_eq!(test_model("tiny"), models.join("tiny.gguf"));
    std::env::set_var("TROUPE_TEST_MODELS", &models);
    assert_eq!(test_model("tiny"), models.join("tiny.gguf"));
    std::env::set_var("TROUPE_TEST_MODELS", tmp.path());
    let panic = std::panic::catch_unwind(|| test_model("tiny")).expect_err("must panic");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("troupe pull tiny"), "{msg}");

    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}
