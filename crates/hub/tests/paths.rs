//! Data directory precedence, with the environment given as a function
//! (no process-wide state; see `env.rs` for the real environment).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use troupe_hub::{data_dir_with, model_path, models_dir, HubError};

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
    move |k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| OsString::from(v))
    }
}

const ALL: &[(&str, &str)] = &[
    ("TROUPE_DATA", "/t"),
    ("XDG_DATA_HOME", "/x"),
    ("HOME", "/h"),
];

#[test]
fn explicit_path_wins() {
    let got = data_dir_with(Some(Path::new("/flag")), env(ALL)).ok();
    assert_eq!(got, Some(PathBuf::from("/flag")));
}

#[test]
fn then_troupe_data_then_xdg_then_home() {
    assert_eq!(data_dir_with(None, env(ALL)).ok(), Some("/t".into()));
    assert_eq!(
        data_dir_with(None, env(&ALL[1..])).ok(),
        Some(PathBuf::from("/x/troupe"))
    );
    assert_eq!(
        data_dir_with(None, env(&ALL[2..])).ok(),
        Some(PathBuf::from("/h/.local/share/troupe"))
    );
    assert!(matches!(
        data_dir_with(None, env(&[])),
        Err(HubError::NoDataDir)
    ));
}

#[test]
fn empty_and_relative_variables_are_ignored() {
    let vars = [
        ("TROUPE_DATA", ""),
        ("XDG_DATA_HOME", "rel/dir"),
        ("HOME", "/h"),
    ];
    assert_eq!(
        data_dir_with(None, env(&vars)).ok(),
        Some(PathBuf::from("/h/.local/share/troupe"))
    );
    let vars = [("XDG_DATA_HOME", ""), ("HOME", "/h")];
    assert_eq!(
        data_dir_with(None, env(&vars)).ok(),
        Some(PathBuf::from("/h/.local/share/troupe"))
    );
}

#[test]
fn model_files_live_under_models() {
    let data = Path::new("/d");
    assert_eq!(models_dir(data), PathBuf::from("/d/models"));
    assert_eq!(
        model_path(data, "smollm2-135m"),
        PathBuf::from("/d/models/smollm2-135m.gguf")
    );
}
