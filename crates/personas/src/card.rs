//! Character Cards (the format SillyTavern and most character sites share):
//! V2 (`chara_card_v2`) and V3 (`chara_card_v3`) JSON, V1 flat JSON on
//! import, and PNGs carrying the JSON base64-encoded in a `chara` (V2) or
//! `ccv3` (V3) text chunk.
//!
//! Mapping: a card's `description` and `personality` both describe the
//! character to the model, so they become the persona's `personality`;
//! `first_mes` is the greeting, `mes_example` the example exchanges. Every
//! card field Troupe does not use (creator, tags, lorebook, `extensions`
//! with keys of other tools, V3 assets, ...) is kept in [`Persona::card`]
//! and written back on export. Troupe's own fields ride in
//! `extensions.troupe`, so a Troupe persona survives export and import
//! unchanged.

use crate::{slug, Example, Persona, PersonaError};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Card spec versions we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardVersion {
    V2,
    V3,
}

/// Card fields that map onto persona fields (everything else is kept as is).
const MAPPED: [&str; 8] = [
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "alternate_greetings",
    "system_prompt",
];

/// Standard card fields export fills with empty defaults when absent.
const STANDARD_DEFAULTS: [&str; 6] = [
    "post_history_instructions",
    "tags",
    "creator",
    "character_version",
    "group_only_greetings",
    "extensions",
];

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// Largest card accepted (JSON or PNG), bytes.
pub const MAX_CARD_BYTES: usize = 8 << 20;

fn bad(why: impl Into<String>) -> PersonaError {
    PersonaError::Card(why.into())
}

/// Imports a card from a PNG or JSON file's bytes.
pub fn import(bytes: &[u8]) -> Result<Persona, PersonaError> {
    if bytes.len() > MAX_CARD_BYTES {
        return Err(bad(format!("larger than {MAX_CARD_BYTES} bytes")));
    }
    if crate::png::is_png(bytes) {
        return import_png(bytes);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("neither a PNG nor UTF-8 JSON"))?;
    import_json(text)
}

/// Imports a card PNG: the `ccv3` chunk if present, else `chara`.
pub fn import_png(bytes: &[u8]) -> Result<Persona, PersonaError> {
    let texts = crate::png::text_chunks(bytes)?;
    let find = |k: &str| texts.iter().find(|(key, _)| key == k).map(|(_, t)| t);
    let payload = find("ccv3")
        .or_else(|| find("chara"))
        .ok_or_else(|| bad("the PNG has no `chara` or `ccv3` text chunk"))?;
    let clean: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|e| bad(format!("card chunk is not base64: {e}")))?;
    let text = String::from_utf8(raw).map_err(|_| bad("card chunk is not UTF-8 JSON"))?;
    import_json(&text)
}

/// Imports V3, V2 or V1 card JSON.
pub fn import_json(text: &str) -> Result<Persona, PersonaError> {
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Value::Object(top) = v else {
        return Err(bad("a card is a JSON object"));
    };
    let data = match top.get("spec").and_then(Value::as_str) {
        Some("chara_card_v2" | "chara_card_v3") => match top.get("data") {
            Some(Value::Object(d)) => d.clone(),
            _ => return Err(bad("`data` must be an object")),
        },
        Some(other) => return Err(bad(format!("unknown card spec {other:?}"))),
        None if top.contains_key("name") => top, // V1: the fields at top level
        None => return Err(bad("no `spec` and no `name`: not a character card")),
    };
    from_data(data)
}

fn text(d: &Map<String, Value>, k: &str) -> String {
    d.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn from_data(mut d: Map<String, Value>) -> Result<Persona, PersonaError> {
    let name = text(&d, "name").trim().to_string();
    if name.is_empty() {
        return Err(bad("the card has no name"));
    }
    let troupe = match d.get_mut("extensions") {
        Some(Value::Object(ext)) => ext.remove("troupe"),
        _ => None,
    };
    let had_troupe = troupe.is_some();
    let mut p = Persona {
        id: slug(&name),
        name: name.clone(),
        scenario: text(&d, "scenario"),
        greeting: text(&d, "first_mes"),
        alternate_greetings: d
            .get("alternate_greetings")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        examples: parse_examples(&text(&d, "mes_example")),
        system_prompt: text(&d, "system_prompt"),
        ..Persona::default()
    };
    if let Some(Value::Object(mut t)) = troupe {
        // A Troupe export: our own fields come back exactly.
        t.insert("name".into(), Value::String(name.clone()));
        let ours: Persona = serde_json::from_value(Value::Object(t))
            .map_err(|e| bad(format!("extensions.troupe: {e}")))?;
        p = Persona {
            name,
            scenario: p.scenario,
            greeting: p.greeting,
            alternate_greetings: p.alternate_greetings,
            examples: p.examples,
            system_prompt: p.system_prompt,
            ..ours
        };
    } else {
        let (desc, pers) = (text(&d, "description"), text(&d, "personality"));
        p.personality = [desc.trim(), pers.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let notes = text(&d, "creator_notes");
        let blurb = if notes.trim().is_empty() {
            &desc
        } else {
            &notes
        };
        p.description = shorten(blurb, 300);
        p.tagline = shorten(blurb.lines().next().unwrap_or_default(), 80);
    }
    for k in MAPPED {
        d.remove(k);
    }
    if had_troupe {
        // Drop what export filled in (defaults, notes derived from ours).
        if d.get("creator_notes").and_then(Value::as_str) == Some(p.description.as_str()) {
            d.remove("creator_notes");
        }
        d.retain(|k, v| !(STANDARD_DEFAULTS.contains(&k.as_str()) && is_empty(v)));
    }
    p.card.extend(d);
    p.validate()?;
    Ok(p)
}

/// At most `max` characters of the first line(s), cut at a word.
fn shorten(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max - 1).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(a, _)| a);
    format!("{cut}…")
}

/// Parses `mes_example` (`<START>` blocks of `{{user}}:` / `{{char}}:`
/// lines; a line without a prefix continues the one before) into exchanges.
pub fn parse_examples(text: &str) -> Vec<Example> {
    let mut turns: Vec<(bool, String)> = Vec::new(); // (is_user, text)
    for line in text.lines() {
        let t = line.trim_start();
        if t.eq_ignore_ascii_case("<start>") {
            turns.push((false, String::new())); // block separator
            continue;
        }
        let lower = t.to_ascii_lowercase();
        let prefix = ["{{user}}:", "<user>:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| (true, p.len()))
            .or_else(|| {
                ["{{char}}:", "<bot>:", "<char>:"]
                    .iter()
                    .find(|p| lower.starts_with(*p))
                    .map(|p| (false, p.len()))
            });
        match prefix {
            Some((user, n)) => turns.push((user, t[n..].trim().to_string())),
            None => {
                if let Some((_, last)) = turns.last_mut() {
                    if !last.is_empty() {
                        last.push('\n');
                        last.push_str(line);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut it = turns.into_iter().peekable();
    while let Some((user, u)) = it.next() {
        if user && !u.is_empty() {
            if let Some((false, c)) = it.peek() {
                if !c.is_empty() {
                    out.push(Example {
                        user: u.trim().into(),
                        char: c.trim().into(),
                    });
                    it.next();
                }
            }
        }
    }
    out
}

/// `mes_example` text for the persona's examples.
pub fn format_examples(examples: &[Example]) -> String {
    examples
        .iter()
        .map(|e| {
            format!(
                "<START>\n{{{{user}}}}: {}\n{{{{char}}}}: {}\n",
                e.user, e.char
            )
        })
        .collect()
}

/// The card JSON of a persona.
pub fn export_json(p: &Persona, v: CardVersion) -> Value {
    let mut data = p.card.clone();
    let ours = Persona {
        // These travel in the standard card fields.
        name: String::new(),
        scenario: String::new(),
        greeting: String::new(),
        alternate_greetings: Vec::new(),
        examples: Vec::new(),
        system_prompt: String::new(),
        card: Map::new(),
        ..p.clone()
    };
    let mut troupe = serde_json::to_value(&ours).unwrap_or(Value::Null);
    if let Value::Object(t) = &mut troupe {
        for k in [
            "name",
            "scenario",
            "greeting",
            "alternate_greetings",
            "examples",
        ] {
            t.remove(k);
        }
    }
    let ext = data
        .entry("extensions")
        .or_insert_with(|| Value::Object(Map::new()));
    if !ext.is_object() {
        *ext = Value::Object(Map::new());
    }
    if let Value::Object(ext) = ext {
        ext.insert("troupe".into(), troupe);
    }
    let mut set = |k: &str, val: Value| {
        data.insert(k.into(), val);
    };
    // Other tools prompt with description + personality + scenario +
    // examples: give them the full character as Troupe renders it.
    set("name", json!(p.name));
    set("description", json!(p.system_text("{{user}}")));
    set("personality", json!(p.personality));
    set("scenario", json!(p.scenario));
    set("first_mes", json!(p.greeting));
    set("mes_example", json!(format_examples(&p.examples)));
    set("alternate_greetings", json!(p.alternate_greetings));
    set("system_prompt", json!(p.system_prompt));
    if !data.contains_key("creator_notes") {
        data.insert("creator_notes".into(), json!(p.description));
    }
    for (k, default) in [
        ("post_history_instructions", json!("")),
        ("tags", json!([])),
        ("creator", json!("")),
        ("character_version", json!("")),
    ] {
        data.entry(k).or_insert(default);
    }
    match v {
        CardVersion::V2 => json!({"spec": "chara_card_v2", "spec_version": "2.0", "data": data}),
        CardVersion::V3 => {
            data.entry("group_only_greetings").or_insert(json!([]));
            json!({"spec": "chara_card_v3", "spec_version": "3.0", "data": data})
        }
    }
}

/// A card PNG of the persona: `image` (a PNG) if given, else a square in
/// its colour, with both a `chara` (V2) and a `ccv3` (V3) chunk so that
/// older and newer tools read it.
pub fn export_png(p: &Persona, image: Option<&[u8]>) -> Result<Vec<u8>, PersonaError> {
    let b64 = |v: CardVersion| {
        base64::engine::general_purpose::STANDARD.encode(export_json(p, v).to_string())
    };
    let (v2, v3) = (b64(CardVersion::V2), b64(CardVersion::V3));
    let square;
    let img = match image {
        Some(i) => i,
        None => {
            square = crate::png::square(rgb(&p.color));
            &square
        }
    };
    crate::png::with_texts(img, &[("chara", &v2), ("ccv3", &v3)])
}

fn rgb(color: &str) -> [u8; 3] {
    let h = |i: usize| {
        color
            .get(i..i + 2)
            .and_then(|x| u8::from_str_radix(x, 16).ok())
            .unwrap_or(0x60)
    };
    [h(1), h(3), h(5)]
}
