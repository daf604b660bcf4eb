//! Character Card import and export: round trips of every built-in through
//! V2, V3 and PNG, foreign cards with unknown extensions, and bad input.

use serde_json::{json, Value};
use troupe_personas::card::{self, CardVersion};
use troupe_personas::{builtin, png, PersonaError};

#[test]
fn builtins_round_trip_through_every_card_form() {
    for p in builtin().expect("built-ins") {
        for v in [CardVersion::V2, CardVersion::V3] {
            let j = card::export_json(&p, v).to_string();
            let back = card::import(j.as_bytes()).expect("import json");
            assert_eq!(back, p, "{} via {v:?}", p.id);
        }
        let img = card::export_png(&p, None).expect("png");
        assert_eq!(
            card::import(&img).expect("import png"),
            p,
            "{} via PNG",
            p.id
        );
        let texts = png::text_chunks(&img).expect("chunks");
        let keys: Vec<_> = texts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["chara", "ccv3"]);
    }
}

fn foreign_v2() -> Value {
    json!({
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Marla",
            "description": "{{char}} is a lighthouse keeper who talks to gulls.",
            "personality": "gruff, kind",
            "scenario": "A storm night at the lighthouse.",
            "first_mes": "Shut the door, {{user}}, you're letting the sea in.",
            "mes_example": "<START>\n{{user}}: Hi!\n{{char}}: Hmph. Hello.\nMind the gulls.\n<START>\n{{user}}: Tea?\n{{char}}: Always.",
            "creator_notes": "Made for a test.\nSecond line.",
            "system_prompt": "",
            "post_history_instructions": "Stay gruff.",
            "alternate_greetings": ["Evening."],
            "tags": ["sea", "gruff"],
            "creator": "someone",
            "character_version": "1.2",
            "character_book": {"entries": [{"keys": ["gull"], "content": "Gulls are friends."}]},
            "extensions": {"depth_prompt": {"depth": 4, "prompt": "x"}, "fav": true, "talkativeness": "0.5"}
        }
    })
}

#[test]
fn foreign_card_keeps_unknown_fields_and_extensions() {
    let p = card::import(foreign_v2().to_string().as_bytes()).expect("import");
    assert_eq!(p.id, "marla");
    assert!(p.personality.contains("lighthouse keeper") && p.personality.contains("gruff"));
    assert_eq!(p.examples.len(), 2);
    assert_eq!(p.examples[0].char, "Hmph. Hello.\nMind the gulls.");
    assert_eq!(p.tagline, "Made for a test.");
    let block = p.block("Ann");
    assert!(block
        .iter()
        .any(|t| t.content.contains("Shut the door, Ann")));
    assert!(block[0].content.contains("Marla is a lighthouse keeper"));
    for v in [CardVersion::V2, CardVersion::V3] {
        let out = card::export_json(&p, v);
        let d = &out["data"];
        let src = &foreign_v2()["data"];
        for k in [
            "tags",
            "creator",
            "character_version",
            "character_book",
            "creator_notes",
            "post_history_instructions",
        ] {
            assert_eq!(d[k], src[k], "{k} via {v:?}");
        }
        for k in ["depth_prompt", "fav", "talkativeness"] {
            assert_eq!(
                d["extensions"][k], src["extensions"][k],
                "extensions.{k} via {v:?}"
            );
        }
        // And again through import: still there, persona unchanged.
        let again = card::import(out.to_string().as_bytes()).expect("re-import");
        assert_eq!(again, p);
    }
    let img = card::export_png(&p, None).expect("png");
    assert_eq!(card::import(&img).expect("png import"), p);
}

#[test]
fn v1_and_v3_cards_import() {
    let v1 = json!({"name": "Old Tom", "description": "A miller.", "first_mes": "Flour!", "mes_example": ""});
    let p = card::import(v1.to_string().as_bytes()).expect("v1");
    assert_eq!((p.id.as_str(), p.greeting.as_str()), ("old-tom", "Flour!"));
    let mut v3 = foreign_v2();
    v3["spec"] = json!("chara_card_v3");
    v3["spec_version"] = json!("3.0");
    v3["data"]["group_only_greetings"] = json!(["Hi all."]);
    v3["data"]["assets"] =
        json!([{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]);
    v3["data"]["nickname"] = json!("M");
    let p = card::import(v3.to_string().as_bytes()).expect("v3");
    let out = card::export_json(&p, CardVersion::V3);
    for k in ["group_only_greetings", "assets", "nickname"] {
        assert_eq!(out["data"][k], v3["data"][k], "{k}");
    }
    // A given avatar PNG keeps its pixels and gains the card chunks.
    let avatar = png::square([10, 20, 30]);
    let img = card::export_png(&p, Some(&avatar)).expect("png");
    assert!(img.len() > avatar.len());
    assert_eq!(card::import(&img).expect("import"), p);
}

#[test]
fn bad_cards_are_clear_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", vec![0xFF, 0x00, 0x13]),
        ("not an object", b"[1,2]".to_vec()),
        (
            "no name",
            br#"{"spec":"chara_card_v2","data":{"description":"x"}}"#.to_vec(),
        ),
        (
            "bad spec",
            br#"{"spec":"chara_card_v9","data":{"name":"x"}}"#.to_vec(),
        ),
        (
            "data not object",
            br#"{"spec":"chara_card_v2","data":3}"#.to_vec(),
        ),
        ("png without card", png::square([1, 1, 1])),
        (
            "png bad base64",
            png::with_texts(&png::square([1, 1, 1]), &[("chara", "!!!")]).expect("png"),
        ),
        ("truncated png", png::square([1, 1, 1])[..40].to_vec()),
    ];
    for (what, bytes) in cases {
        match card::import(&bytes) {
            Err(PersonaError::Card(_) | PersonaError::Png(_) | PersonaError::Invalid { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}
