//! Tokenizers built from small hand-written GGUF files: errors on broken
//! metadata, BPE and SentencePiece on toy vocabularies, special tokens and
//! streaming decode across split characters.

use troupe_gguf::GgufFile;
use troupe_tokenizer::{ModelKind, PreTokenizer, Tokenizer, TokenizerError};

/// A metadata value for [`gguf`].
enum V {
    Str(&'static str),
    U32(u32),
    I32(i32),
    Bool(bool),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a GGUF v3 file with the given metadata and no tensors.
fn gguf(kvs: &[(&str, V)]) -> GgufFile {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        let array_header = |out: &mut Vec<u8>, ty: u32, n: usize| {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(n as u64).to_le_bytes());
        };
        match value {
            V::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            V::U32(x) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            V::I32(x) => {
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            V::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            V::Strs(v) => {
                array_header(&mut out, 8, v.len());
                for s in v {
                    put_str(&mut out, s);
                }
            }
            V::F32s(v) => {
                array_header(&mut out, 6, v.len());
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            V::I32s(v) => {
                array_header(&mut out, 5, v.len());
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    GgufFile::from_bytes(out).expect("hand-written GGUF parses")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// GPT-2's byte-to-unicode table, written out independently of the crate.
fn gpt2_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).expect("valid code point")
    }
}

fn gpt2_encode(s: &str) -> String {
    s.bytes().map(gpt2_char).collect()
}

/// Replaces or adds `extra` keys.
fn override_keys(kvs: &mut Vec<(&'static str, V)>, extra: Vec<(&'static str, V)>) {
    for (key, value) in extra {
        kvs.retain(|(k, _)| *k != key);
        kvs.push((key, value));
    }
}

/// Byte-level BPE toy: ids 0..256 are the bytes, then merges' results, then
/// two control tokens.
fn toy_bpe(extra: Vec<(&'static str, V)>) -> Result<Tokenizer, TokenizerError> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_char(b).to_string()).collect();
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let n = tokens.len();
    let mut types = vec![1i32; n];
    types[n - 2] = 3;
    types[n - 1] = 3;
    let mut kvs = vec![
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("smollm")),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.merges", V::Strs(strings(&merges))),
        ("tokenizer.ggml.eos_token_id", V::U32(n as u32 - 1)),
    ];
    override_keys(&mut kvs, extra);
    Tokenizer::from_gguf(&gguf(&kvs))
}

/// SentencePiece toy: unknown/control tokens, 256 byte tokens, pieces.
fn toy_spm(extra: Vec<(&'static str, V)>) -> Result<Tokenizer, TokenizerError> {
    let mut tokens = strings(&["<unk>", "<s>", "</s>", "<start_of_turn>"]);
    let mut types = vec![2, 3, 3, 3];
    let mut scores = vec![0.0f32; 4];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (piece, score) in [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -2.0),
        ("▁a", -1.5),
        ("ab", -1.2),
        ("▁ab", -0.5),
    ] {
        tokens.push(piece.to_string());
        types.push(1);
        scores.push(score);
    }
    let mut kvs = vec![
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.scores", V::F32s(scores)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
    ];
    override_keys(&mut kvs, extra);
    Tokenizer::from_gguf(&gguf(&kvs))
}

#[test]
fn toy_bpe_merges_and_special_tokens() {
    let tok = toy_bpe(vec![]).expect("toy BPE");
    assert_eq!(tok.kind(), ModelKind::Bpe(PreTokenizer::Smollm));
    let id = |t: &str| tok.token_id(&gpt2_encode(t)).expect(t);
    let (start, end) = (tok.vocab_size() as u32 - 2, tok.vocab_size() as u32 - 1);
    assert_eq!(
        tok.encode("hello wo", false, false),
        [id("hello"), id(" wo")]
    );
    // Digits are split one by one by the smollm pre-tokenizer.
    assert_eq!(
        tok.encode("12", false, false),
        [u32::from(b'1'), u32::from(b'2')]
    );
    assert_eq!(
        tok.encode("<|im_start|>hello<|im_end|>", false, true),
        [start, id("hello"), end]
    );
    // Without parse_special the markers are plain text.
    let plain = tok.encode("<|im_end|>", false, false);
    assert!(!plain.contains(&end) && plain.len() > 1);
    assert_eq!(tok.decode_bytes(&plain, false), b"<|im_end|>");
    assert!(tok.is_eog(end));
    assert_eq!(tok.token_to_piece(end, true), b"<|im_end|>");
    assert_eq!(tok.token_to_piece(end, false), b"");
    assert_eq!(tok.decode(&[id("hello"), end, id(" wo")]), "hello wo");
    assert!(tok.encode("", true, true).is_empty());
}

#[test]
fn bpe_stream_holds_back_split_emoji() {
    let tok = toy_bpe(vec![]).expect("toy BPE");
    let ids = tok.encode("a\u{1f980}b", false, false);
    assert_eq!(ids, [97, 0xf0, 0x9f, 0xa6, 0x80, 98]);
    let mut dec = tok.stream_decoder(false);
    let parts: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    assert_eq!(parts, ["a", "", "", "", "\u{1f980}", "b"]);
    assert_eq!(dec.finish(), "");

    // A cut-off character comes out as U+FFFD only at the end.
    let mut dec = tok.stream_decoder(false);
    assert_eq!(dec.push(0xf0), "");
    assert_eq!(dec.push(0x9f), "");
    assert_eq!(dec.pending(), [0xf0, 0x9f]);
    assert_eq!(dec.finish(), "\u{fffd}");

    // Bytes that can never start a character are replaced at once.
    let mut dec = tok.stream_decoder(false);
    assert_eq!(dec.push(0xff), "\u{fffd}");
    assert_eq!(dec.push(u32::from(b'x')), "x");
}

#[test]
fn toy_spm_scores_byte_fallback_and_space_prefix() {
    let tok = toy_spm(vec![]).expect("toy SPM");
    assert_eq!(tok.kind(), ModelKind::Spm);
    let id = |t: &str| tok.token_id(t).expect(t);
    // add_bos defaults to true for SentencePiece, and so does the space prefix.
    assert_eq!(tok.encode("ab ab", true, false), [1, id("▁ab"), id("▁ab")]);
    assert_eq!(tok.encode("ab", false, false), [id("▁ab")]);
    // "é" is no piece: UTF-8 bytes C3 A9 as byte tokens.
    assert_eq!(
        tok.encode("é", false, false),
        [id("▁"), id("<0xC3>"), id("<0xA9>")]
    );
    // After a special token the next fragment gets a space prefix again.
    assert_eq!(tok.encode("<start_of_turn>ab", false, true), [3, id("▁ab")]);
    // The decoder drops the prefix space of the first piece.
    assert_eq!(tok.decode(&tok.encode("ab ab", false, false)), "ab ab");
    assert_eq!(tok.decode(&tok.encode("ab ab", true, false)), " ab ab");

    let tok = toy_spm(vec![("tokenizer.ggml.add_space_prefix", V::Bool(false))]).expect("toy");
    assert_eq!(tok.encode("ab", false, false), [id("ab")]);
}

#[test]
fn spm_stream_joins_byte_fallback_tokens() {
    let tok = toy_spm(vec![("tokenizer.ggml.add_space_prefix", V::Bool(false))]).expect("toy");
    let ids = tok.encode("aé\u{1f980}", false, false);
    assert_eq!(ids.len(), 1 + 2 + 4);
    let mut dec = tok.stream_decoder(false);
    let parts: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    assert_eq!(parts, ["a", "", "é", "", "", "", "\u{1f980}"]);
    assert_eq!(dec.finish(), "");
    assert_eq!(tok.decode(&ids), "aé\u{1f980}");
}

fn err_of(result: Result<Tokenizer, TokenizerError>) -> TokenizerError {
    match result {
        Ok(_) => panic!("broken metadata was accepted"),
        Err(e) => e,
    }
}

#[test]
fn broken_metadata_gives_clear_errors() {
    let e = err_of(Tokenizer::from_gguf(&gguf(&[(
        "tokenizer.ggml.tokens",
        V::Strs(strings(&["a"])),
    )])));
    assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");

    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("bert")),
        ("tokenizer.ggml.tokens", V::Strs(strings(&["a"]))),
    ])));
    assert!(
        matches!(e, TokenizerError::UnsupportedModel(ref m) if m == "bert"),
        "{e}"
    );

    let e = err_of(toy_bpe(vec![("tokenizer.ggml.pre", V::Str("nonsense"))]));
    assert!(
        matches!(e, TokenizerError::UnsupportedPreTokenizer(_)),
        "{e}"
    );

    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("qwen2")),
        ("tokenizer.ggml.tokens", V::Strs(strings(&["a", "b"]))),
    ])));
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");

    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(vec![])),
        ("tokenizer.ggml.merges", V::Strs(vec![])),
    ])));
    assert!(matches!(e, TokenizerError::EmptyVocab), "{e}");

    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        (
            "tokenizer.ggml.tokens",
            V::Strs(strings(&["<unk>", "<s>", "</s>"])),
        ),
        ("tokenizer.ggml.scores", V::F32s(vec![0.0])),
    ])));
    assert!(
        matches!(
            e,
            TokenizerError::LengthMismatch {
                found: 1,
                expected: 3,
                ..
            }
        ),
        "{e}"
    );

    let e = err_of(toy_spm(vec![(
        "tokenizer.ggml.bos_token_id",
        V::U32(100_000),
    )]));
    assert!(
        matches!(e, TokenizerError::SpecialIdOutOfRange { id: 100_000, .. }),
        "{e}"
    );

    let e = err_of(toy_spm(vec![("tokenizer.ggml.eos_token_id", V::I32(-1))]));
    assert!(matches!(e, TokenizerError::Gguf(_)), "{e}");

    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(strings(&["a", "b", "a"]))),
    ])));
    assert!(
        matches!(
            e,
            TokenizerError::DuplicateToken {
                id: 2,
                first: 0,
                ..
            }
        ),
        "{e}"
    );

    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(strings(&["a"]))),
        ("tokenizer.ggml.token_type", V::Strs(strings(&["normal"]))),
    ])));
    assert!(matches!(e, TokenizerError::WrongArrayType { .. }), "{e}");

    // A one-token SentencePiece vocabulary has no default BOS (id 1).
    let e = err_of(Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(strings(&["a"]))),
    ])));
    assert!(
        matches!(e, TokenizerError::MissingSpecial { what: "BOS" }),
        "{e}"
    );

    let e = err_of(toy_bpe(vec![("tokenizer.ggml.merges", V::I32s(vec![1]))]));
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");
}

#[test]
fn missing_pre_falls_back_to_default() {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_char(b).to_string()).collect();
    tokens.push("!!".into());
    let tok = Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.merges", V::Strs(strings(&["! !"]))),
    ]))
    .expect("no pre");
    assert_eq!(tok.kind(), ModelKind::Bpe(PreTokenizer::Default));
    assert_eq!(tok.encode("a!!", false, false), [97, 256]);
    // The default vocabulary cleans spaces before punctuation on decode.
    assert_eq!(tok.decode(&tok.encode("a !", false, false)), "a!");
}
