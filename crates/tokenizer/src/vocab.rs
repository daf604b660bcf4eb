//! The vocabulary read from GGUF `tokenizer.ggml.*` metadata: token texts,
//! scores, attributes, special ids, flags and the end-of-generation set.
//!
//! Follows llama.cpp's `llama_vocab::impl::load` (`src/llama-vocab.cpp`):
//! the per-model defaults, the pre-tokenizer table, the special ids found by
//! their text when the metadata does not name them (EOT, EOM, FIM), the
//! tokens forced to "control" and the end-of-generation list built from token
//! texts. Where llama.cpp's choice depends on hash-map iteration order (which
//! of several EOT-looking tokens becomes *the* EOT id) we take the first in
//! the order of the text lists below, which makes no difference to the
//! end-of-generation set.

use std::collections::hash_map::Entry;

use troupe_gguf::{Array, GgufFile};

use crate::hash::FastMap;
use crate::pretokenize::PreTokenizer;
use crate::TokenizerError;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// Which tokenizer algorithm a vocabulary uses (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `gpt2`: byte-level BPE with a regex pre-tokenizer.
    Bpe(PreTokenizer),
    /// `llama`: SentencePiece (score-ordered merges, byte fallback).
    Spm,
}

/// Special token ids (llama.cpp's `special_*_id`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

pub(crate) struct Vocab {
    pub kind: ModelKind,
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    pub ids: FastMap<String, u32>,
    pub special: SpecialIds,
    /// End-of-generation tokens, sorted.
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// Detokenizer clean-up of spaces before punctuation (`clean_spaces`).
    pub clean_spaces: bool,
    /// A word that is a whole token is taken as is, before merges.
    pub ignore_merges: bool,
}

/// What a `tokenizer.ggml.pre` name sets besides the splitter.
struct PreConfig {
    pre: PreTokenizer,
    clean_spaces: bool,
    ignore_merges: bool,
    add_bos: bool,
    no_bos: bool,
}

/// llama.cpp's table of pre-tokenizer names, for the splitters we implement.
fn pre_config(name: &str) -> Option<PreConfig> {
    use PreTokenizer::*;
    let plain = |pre, clean_spaces| PreConfig {
        pre,
        clean_spaces,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    };
    Some(match name {
        "default" => plain(Default, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..plain(Llama3, true)
        },
        "dbrx" | "smaug-bpe" => plain(Llama3, true),
        "chatglm-bpe" => PreConfig {
            no_bos: true,
            ..plain(Llama3, true)
        },
        "glm4" | "glm5" => PreConfig {
            no_bos: true,
            ignore_merges: true,
            ..plain(Llama3, true)
        },
        "gpt-2" | "phi-2" | "gigachat" | "a.x-4.0" | "mellum" | "mpt" | "olmo" | "jais"
        | "exaone4" => plain(Gpt2, true),
        "trillion" | "granite-docling" => plain(Gpt2, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open"
        | "grok-2" => plain(Qwen2, false),
        "stablelm2" | "megrez" => plain(Qwen2, true),
        "smollm" | "command-r" => plain(Smollm, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            plain(Smollm, true)
        }
        _ => return None,
    })
}

/// Picks one id field of [`SpecialIds`].
type Slot = fn(&mut SpecialIds) -> &mut Option<u32>;

/// Texts that mark a token as EOT when `tokenizer.ggml.eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Token texts that end generation (llama.cpp's EOG list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// gpt-oss tokens that llama.cpp always renders (made user-defined).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";

impl Vocab {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Vocab, TokenizerError> {
        let model = gguf.str("tokenizer.ggml.model")?;
        let pre_name = gguf.opt_str("tokenizer.ggml.pre")?;

        // Per-model defaults, then what the pre-tokenizer name sets.
        let (kind, mut add_bos, mut add_space_prefix, clean_spaces, ignore_merges, no_bos) =
            match model {
                "gpt2" => {
                    let cfg = match pre_name {
                        None => pre_config("default"),
                        Some(name) => pre_config(name),
                    }
                    .ok_or_else(|| {
                        TokenizerError::UnsupportedPreTokenizer(
                            pre_name.unwrap_or_default().to_string(),
                        )
                    })?;
                    let kind = ModelKind::Bpe(cfg.pre);
                    (
                        kind,
                        cfg.add_bos,
                        false,
                        cfg.clean_spaces,
                        cfg.ignore_merges,
                        cfg.no_bos,
                    )
                }
                "llama" => (ModelKind::Spm, true, true, false, false, false),
                other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
            };
        if let Some(v) = gguf.opt_bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }

        let tokens = gguf.str_array(KEY_TOKENS)?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= i32::MAX as usize {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        let scores = read_scores(gguf, n)?;
        let types = read_types(gguf, n)?;

        let mut texts = Vec::with_capacity(n);
        let mut ids = FastMap::default();
        ids.reserve(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, tok) in tokens.iter().enumerate() {
            let id = i as u32;
            let text = if tok.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                tok.clone()
            };
            match ids.entry(text) {
                Entry::Occupied(e) => {
                    return Err(TokenizerError::DuplicateToken {
                        id,
                        first: *e.get(),
                        text: e.key().clone(),
                    })
                }
                Entry::Vacant(e) => {
                    texts.push(e.key().clone());
                    e.insert(id);
                }
            }
            attrs.push(match types.as_ref().map(|t| t[i]) {
                None => attr::NORMAL,
                Some(1) => attr::NORMAL,
                Some(2) => attr::UNKNOWN,
                Some(3) => attr::CONTROL,
                Some(4) => attr::USER_DEFINED,
                Some(5) => attr::UNUSED,
                Some(6) => attr::BYTE,
                Some(_) => 0,
            });
        }

        let mut vocab = Vocab {
            kind,
            texts,
            scores,
            attrs,
            ids,
            special: SpecialIds::default(),
            eog: Vec::new(),
            add_bos,
            add_eos: false,
            add_space_prefix,
            clean_spaces,
            ignore_merges,
        };
        vocab.read_special_ids(gguf, no_bos)?;

        if let Some(v) = gguf.opt_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        vocab.add_bos = add_bos;
        if let Some(v) = gguf.opt_bool("tokenizer.ggml.add_eos_token")? {
            vocab.add_eos = v;
        }
        if vocab.add_bos && vocab.special.bos.is_none() {
            return Err(TokenizerError::MissingSpecial { what: "BOS" });
        }
        if vocab.add_eos && vocab.special.eos.is_none() {
            return Err(TokenizerError::MissingSpecial { what: "EOS" });
        }

        vocab.detect_special_by_text();
        vocab.mark_unused();
        vocab.build_eog();
        let name = gguf.opt_str("general.name")?.unwrap_or_default();
        vocab.strip_attrs_by_name(name);
        Ok(vocab)
    }

    pub fn n_tokens(&self) -> usize {
        self.texts.len()
    }

    pub fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Defaults per model, then the ids the metadata names.
    fn read_special_ids(&mut self, gguf: &GgufFile, no_bos: bool) -> Result<(), TokenizerError> {
        let n = self.n_tokens();
        let in_range = |id: u32| ((id as usize) < n).then_some(id);
        let s = &mut self.special;
        match self.kind {
            ModelKind::Bpe(_) => {
                s.bos = if no_bos { None } else { in_range(11) };
                s.eos = in_range(11);
            }
            ModelKind::Spm => {
                s.bos = in_range(1);
                s.eos = in_range(2);
                s.unk = in_range(0);
            }
        }
        // (key, slot, whether a bad id is an error rather than ignored)
        let keys: [(&'static str, Slot, bool); 17] = [
            ("tokenizer.ggml.bos_token_id", |s| &mut s.bos, true),
            ("tokenizer.ggml.eos_token_id", |s| &mut s.eos, true),
            ("tokenizer.ggml.eot_token_id", |s| &mut s.eot, true),
            ("tokenizer.ggml.eom_token_id", |s| &mut s.eom, true),
            ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk, true),
            ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep, false),
            ("tokenizer.ggml.padding_token_id", |s| &mut s.pad, false),
            ("tokenizer.ggml.mask_token_id", |s| &mut s.mask, false),
            ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre, false),
            ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf, false),
            ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid, false),
            ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad, false),
            ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep, false),
            ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep, false),
            // Deprecated spellings of the first three FIM ids.
            ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre, false),
            ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf, false),
            ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid, false),
        ];
        for (key, slot, strict) in keys {
            let Some(id) = gguf.opt_usize(key)? else {
                continue;
            };
            if id < n {
                *slot(s) = Some(id as u32);
            } else if strict {
                return Err(TokenizerError::SpecialIdOutOfRange {
                    key,
                    id,
                    n_vocab: n,
                });
            }
            // Otherwise llama.cpp warns and keeps the default; so do we.
        }
        Ok(())
    }

    /// Fills EOT, EOM and FIM ids the metadata left out, by token text, and
    /// makes the chosen tokens control tokens.
    fn detect_special_by_text(&mut self) {
        let lists: [(&[&str], Slot); 8] = [
            (EOT_TEXTS, |s| &mut s.eot),
            (EOM_TEXTS, |s| &mut s.eom),
            (FIM_PRE_TEXTS, |s| &mut s.fim_pre),
            (FIM_SUF_TEXTS, |s| &mut s.fim_suf),
            (FIM_MID_TEXTS, |s| &mut s.fim_mid),
            (FIM_PAD_TEXTS, |s| &mut s.fim_pad),
            (FIM_REP_TEXTS, |s| &mut s.fim_rep),
            (FIM_SEP_TEXTS, |s| &mut s.fim_sep),
        ];
        for (texts, slot) in lists {
            if slot(&mut self.special).is_some() {
                continue;
            }
            if let Some(id) = texts.iter().find_map(|t| self.id(t)) {
                *slot(&mut self.special) = Some(id);
                self.attrs[id as usize] |= attr::CONTROL;
            }
        }
    }

    /// Control tokens named "...unused..." are unused.
    fn mark_unused(&mut self) {
        for (text, a) in self.texts.iter().zip(self.attrs.iter_mut()) {
            if *a & attr::CONTROL != 0 && text.contains("unused") {
                *a |= attr::UNUSED;
            }
        }
    }

    fn build_eog(&mut self) {
        let s = self.special;
        let mut eog: Vec<u32> = [s.fim_pad, s.fim_rep, s.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for text in EOG_TEXTS {
            if let Some(id) = self.id(text) {
                eog.push(id);
                self.attrs[id as usize] |= attr::CONTROL;
            }
        }
        for text in ALWAYS_RENDERED {
            if let Some(id) = self.id(text) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        // Harmony-style vocabularies (`<|return|>` and `<|call|>`, or
        // `<|calls|>` and `<|flush|>`): `<|end|>` ends a message, not the turn.
        let ids = &self.ids;
        let eog_id = |eog: &[u32], t: &str| ids.get(t).copied().filter(|id| eog.contains(id));
        let call = eog_id(&eog, "<|call|>").is_some() || eog_id(&eog, "<|calls|>").is_some();
        let harmony =
            call && (eog_id(&eog, "<|return|>").is_some() || eog_id(&eog, "<|flush|>").is_some());
        if let Some(end) = eog_id(&eog, "<|end|>").filter(|_| harmony) {
            eog.retain(|&id| id != end);
            self.attrs[end as usize] = attr::USER_DEFINED;
        }
        // Vocabularies with `<|tool_response>` or `<|plamo:eos|>` use `</s>`
        // as an ordinary token.
        let plain_s =
            eog_id(&eog, "<|tool_response>").is_some() || eog_id(&eog, "<|plamo:eos|>").is_some();
        if let Some(s_tok) = eog_id(&eog, "</s>").filter(|_| plain_s) {
            eog.retain(|&id| id != s_tok);
            self.attrs[s_tok as usize] = attr::NORMAL;
        }
        self.eog = eog;
    }

    /// llama.cpp sets strip attributes by model name; of its rules only the
    /// Phi-3 one concerns the tokenizers we support.
    fn strip_attrs_by_name(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if !(name.contains("phi-3") || name.contains("phi3")) {
            return;
        }
        for a in &mut self.attrs {
            if *a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0 {
                *a |= attr::RSTRIP;
            }
        }
        for (text, on) in [
            ("</s>", true),
            ("<unk>", false),
            ("<s>", false),
            ("<|endoftext|>", false),
        ] {
            if let Some(id) = self.id(text) {
                let a = &mut self.attrs[id as usize];
                *a = if on {
                    *a | attr::RSTRIP
                } else {
                    *a & !attr::RSTRIP
                };
            }
        }
    }
}

/// `tokenizer.ggml.scores`: optional, floats or integers, at least one per token.
fn read_scores(gguf: &GgufFile, n: usize) -> Result<Vec<f32>, TokenizerError> {
    if gguf.get(KEY_SCORES).is_none() {
        return Ok(vec![0.0; n]);
    }
    let arr = gguf.array(KEY_SCORES)?;
    let scores = match arr {
        Array::F32(_) | Array::F64(_) => arr.to_f32_vec(),
        _ => arr
            .to_i64_vec()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
    }
    .ok_or(TokenizerError::WrongArrayType {
        key: KEY_SCORES,
        expected: "numbers",
    })?;
    if scores.len() < n {
        return Err(TokenizerError::LengthMismatch {
            key: KEY_SCORES,
            found: scores.len(),
            expected: n,
        });
    }
    Ok(scores)
}

/// `tokenizer.ggml.token_type`: optional, integers, at least one per token.
fn read_types(gguf: &GgufFile, n: usize) -> Result<Option<Vec<i64>>, TokenizerError> {
    if gguf.get(KEY_TYPES).is_none() {
        return Ok(None);
    }
    let types = gguf
        .array(KEY_TYPES)?
        .to_i64_vec()
        .ok_or(TokenizerError::WrongArrayType {
            key: KEY_TYPES,
            expected: "integers",
        })?;
    if types.len() < n {
        return Err(TokenizerError::LengthMismatch {
            key: KEY_TYPES,
            found: types.len(),
            expected: n,
        });
    }
    Ok(Some(types))
}
