//! The built-in troupe: every persona loads, follows the schema's promises,
//! and renders with each test model's own chat template inside its budget.

use std::collections::HashSet;
use troupe_gguf::GgufFile;
use troupe_personas::{builtin, Persona};
use troupe_tokenizer::chat::{ChatTemplate, Message};
use troupe_tokenizer::Tokenizer;

/// The cast size the product promises.
const CAST: usize = 30;
/// Most tokens a rendered persona block may take (of a 2,048 context).
const BLOCK_TOKEN_BUDGET: usize = 800;

fn cast() -> Vec<Persona> {
    builtin().expect("built-in personas parse")
}

#[test]
fn thirty_distinct_complete_personas() {
    let cast = cast();
    assert_eq!(cast.len(), CAST);
    let ids: HashSet<_> = cast.iter().map(|p| &p.id).collect();
    let names: HashSet<_> = cast.iter().map(|p| &p.name).collect();
    let greetings: HashSet<_> = cast.iter().map(|p| &p.greeting).collect();
    assert_eq!(
        (ids.len(), names.len(), greetings.len()),
        (CAST, CAST, CAST)
    );
    for p in &cast {
        let id = &p.id;
        for (field, text) in [
            ("tagline", &p.tagline),
            ("description", &p.description),
            ("personality", &p.personality),
            ("scenario", &p.scenario),
            ("greeting", &p.greeting),
            ("style.vocabulary", &p.style.vocabulary),
            ("style.rhythm", &p.style.rhythm),
            ("style.tics", &p.style.tics),
            ("style.punctuation", &p.style.punctuation),
        ] {
            assert!(!text.trim().is_empty(), "{id}: {field} is empty");
        }
        assert!(p.tagline.chars().count() <= 80, "{id}: tagline too long");
        assert!(p.examples.len() >= 4, "{id}: fewer than 4 examples");
        assert!(
            p.alternate_greetings.len() >= 2,
            "{id}: fewer than 2 alternates"
        );
        assert!((3..=5).contains(&p.moods.len()), "{id}: moods");
        assert!(!p.color.is_empty(), "{id}: no color");
        assert!(p.sampling.temperature.is_some(), "{id}: no temperature");
        let rule = p.rule.to_lowercase();
        assert!(
            rule.contains("human") && rule.contains("meet"),
            "{id}: the rule must forbid claiming to be human and meeting in person"
        );
        for e in &p.examples {
            let c = e.char.to_lowercase();
            assert!(
                !c.contains("language model") && !c.contains("as an ai"),
                "{id}: an example breaks character: {}",
                e.char
            );
        }
    }
}

fn template_of(model: &str) -> (Tokenizer, ChatTemplate) {
    let file = GgufFile::open(troupe_hub::test_model(model)).expect("open model");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let text = |id: Option<u32>| {
        id.and_then(|i| tok.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    let (bos, eos) = (text(tok.bos()), text(tok.eos()));
    let source = file.opt_str("tokenizer.chat_template").expect("metadata");
    let tpl = ChatTemplate::from_metadata(source, &bos, &eos).expect("template");
    (tok, tpl)
}

#[test]
fn every_persona_renders_with_every_model_template() {
    let cast = cast();
    for model in ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"] {
        let (tok, tpl) = template_of(model);
        let mut longest = (0, String::new());
        for p in &cast {
            let mut msgs: Vec<Message> = p
                .block("Ann")
                .into_iter()
                .map(|t| Message::new(t.role.as_str(), t.content))
                .collect();
            let block = tpl.render(&msgs, false).expect("render block");
            assert!(block.contains(&p.name), "{model}/{}: name missing", p.id);
            assert!(!block.contains("{{char}}") && !block.contains("{{user}}"));
            let n = tok.encode_chat(&block).len();
            assert!(
                n <= BLOCK_TOKEN_BUDGET,
                "{model}/{}: block is {n} tokens",
                p.id
            );
            if n > longest.0 {
                longest = (n, p.id.clone());
            }
            // The block is a prefix of a conversation's prompt (what makes
            // its KV cache shareable).
            msgs.push(Message::new("user", "How do I boil an egg?"));
            let prompt = tpl.render(&msgs, true).expect("render conversation");
            assert!(prompt.starts_with(&block), "{model}/{}: not a prefix", p.id);
        }
        eprintln!(
            "{model}: longest persona block {} tokens ({})",
            longest.0, longest.1
        );
    }
}

/// After the system message, roles alternate user/assistant and the block
/// ends where the conversation's first turn can follow, with or without a
/// greeting and whether or not the client opens with its own greeting.
#[test]
fn blocks_alternate_roles() {
    use troupe_personas::Role;
    let mut p = cast().remove(0);
    for greeting in [p.greeting.clone(), String::new()] {
        p.greeting = greeting;
        for first_is_assistant in [false, true] {
            let b = p.block_before("Ann", &["Be brief."], first_is_assistant);
            assert_eq!(b[0].role, Role::System);
            assert!(b[0].content.ends_with("\nBe brief."));
            for (i, t) in b[1..].iter().enumerate() {
                let want = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                assert_eq!(t.role, want, "turn {i}");
            }
            let last = b.last().map(|t| t.role);
            let want = if first_is_assistant {
                Role::User
            } else {
                Role::Assistant
            };
            assert_eq!(last, Some(want), "greeting {:?}", p.greeting);
        }
    }
}
