//! Personas: characters the model plays, as data.
//!
//! The 30 built-in personas are TOML files under `personas/` at the
//! repository root, compiled into the binary ([`builtin`]) so a lone binary
//! still has its troupe. Custom personas come from the API or from Character
//! Cards ([`card`]: V2/V3 JSON, and PNG with a `chara` / `ccv3` text chunk).
//!
//! A persona becomes a fixed block of chat turns ([`Persona::render`]): a
//! system message, the example exchanges as earlier turns, and the greeting.
//! Every conversation with the persona starts with the same block, so its
//! KV cache is computed once and shared.

pub mod card;
mod macros;
pub mod png;
mod render;

pub use macros::expand;
pub use render::{Role, Turn};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a persona could not be read or accepted.
#[derive(Debug, thiserror::Error)]
pub enum PersonaError {
    #[error("invalid persona TOML: {0}")]
    Toml(String),
    #[error("invalid persona JSON: {0}")]
    Json(String),
    #[error("invalid persona: {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("not a character card: {0}")]
    Card(String),
    #[error("bad PNG: {0}")]
    Png(String),
}

/// How the character writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Style {
    #[serde(default)]
    pub vocabulary: String,
    #[serde(default)]
    pub rhythm: String,
    #[serde(default)]
    pub tics: String,
    #[serde(default)]
    pub punctuation: String,
}

/// One example exchange: a user line and the character's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub user: String,
    pub char: String,
}

/// Sampling defaults for chats with this persona (a request's own values win).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// A character: the fields of a `personas/*.toml` file (see its README).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tagline: String,
    #[serde(default)]
    pub description: String,
    /// Monogram background in the web gallery (`#rrggbb`).
    #[serde(default)]
    pub color: String,
    #[serde(default)]
    pub personality: String,
    #[serde(default)]
    pub scenario: String,
    #[serde(default)]
    pub greeting: String,
    #[serde(default)]
    pub alternate_greetings: Vec<String>,
    /// The identity rule (never claims to be human, never proposes meeting).
    #[serde(default)]
    pub rule: String,
    #[serde(default)]
    pub style: Style,
    /// Mood name → how it shows.
    #[serde(default)]
    pub moods: BTreeMap<String, String>,
    #[serde(default)]
    pub examples: Vec<Example>,
    #[serde(default)]
    pub sampling: Sampling,
    /// A card's own system prompt, used instead of the generated one when set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_prompt: String,
    /// Card fields Troupe does not use (creator, tags, character_book,
    /// `extensions`, ...), kept so that exporting gives them back.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub card: serde_json::Map<String, serde_json::Value>,
}

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 40;
/// Longest text accepted in any one field (a whole card's worth).
pub const MAX_FIELD_BYTES: usize = 32 * 1024;

impl Persona {
    /// Parses one persona file and checks it ([`Persona::validate`]).
    pub fn from_toml(text: &str) -> Result<Persona, PersonaError> {
        let p: Persona = toml::from_str(text).map_err(|e| PersonaError::Toml(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Parses a persona from its JSON form (the API's) and checks it.
    pub fn from_json(text: &str) -> Result<Persona, PersonaError> {
        let p: Persona =
            serde_json::from_str(text).map_err(|e| PersonaError::Json(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// The TOML form (what `personas/*.toml` hold).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, numbers and maps cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks what the rest of the system relies on: a usable id and name,
    /// bounded field sizes, sane sampling values.
    pub fn validate(&self) -> Result<(), PersonaError> {
        let bad = |field, why: String| Err(PersonaError::Invalid { field, why });
        if !valid_id(&self.id) {
            return bad(
                "id",
                format!(
                    "{:?} must be 1-{MAX_ID_LEN} characters of a-z, 0-9 and '-'",
                    self.id
                ),
            );
        }
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        let texts = [
            ("name", &self.name),
            ("tagline", &self.tagline),
            ("description", &self.description),
            ("personality", &self.personality),
            ("scenario", &self.scenario),
            ("greeting", &self.greeting),
            ("rule", &self.rule),
            ("system_prompt", &self.system_prompt),
        ];
        for (field, t) in texts {
            if t.len() > MAX_FIELD_BYTES {
                return bad(field, format!("longer than {MAX_FIELD_BYTES} bytes"));
            }
        }
        let examples: usize = self
            .examples
            .iter()
            .map(|e| e.user.len() + e.char.len())
            .sum();
        if examples > MAX_FIELD_BYTES {
            return bad("examples", format!("longer than {MAX_FIELD_BYTES} bytes"));
        }
        if !self.color.is_empty() && !valid_color(&self.color) {
            return bad("color", format!("{:?} is not #rrggbb", self.color));
        }
        let s = &self.sampling;
        if s.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return bad("sampling.temperature", "must be within 0..=2".into());
        }
        if s.top_p
            .is_some_and(|t| !(0.0..=1.0).contains(&t) || t == 0.0)
        {
            return bad("sampling.top_p", "must be within (0, 1]".into());
        }
        if s.min_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return bad("sampling.min_p", "must be within 0..=1".into());
        }
        for (f, v) in [
            ("sampling.presence_penalty", s.presence_penalty),
            ("sampling.frequency_penalty", s.frequency_penalty),
        ] {
            if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return bad(f, "must be within -2..=2".into());
            }
        }
        Ok(())
    }
}

/// Whether `id` is a usable persona id (also a URL path segment).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

fn valid_color(c: &str) -> bool {
    c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A persona id made from a name: lowercase ASCII letters and digits, other
/// runs turned into `-` ("Sir Reginald III" → "sir-reginald-iii").
pub fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let s: String = s.trim_end_matches('-').chars().take(MAX_ID_LEN).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "persona".into()
    } else {
        s
    }
}

/// The built-in troupe, parsed from the files compiled in (sorted by id).
/// A built-in file that does not parse is a build defect; the test suite
/// loads every one, so this returns the error rather than hiding a persona.
pub fn builtin() -> Result<Vec<Persona>, PersonaError> {
    let mut v = BUILTIN
        .iter()
        .map(|(file, text)| {
            let p = Persona::from_toml(text)?;
            if file.strip_suffix(".toml") != Some(p.id.as_str()) {
                return Err(PersonaError::Invalid {
                    field: "id",
                    why: format!("{:?} does not match its file {file}", p.id),
                });
            }
            Ok(p)
        })
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(v)
}

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
