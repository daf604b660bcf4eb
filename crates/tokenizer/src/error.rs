//! Errors of reading a tokenizer from GGUF metadata.

use troupe_gguf::GgufError;

/// Everything that can be wrong with a model's `tokenizer.ggml.*` metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key is missing or has the wrong type (from the GGUF reader).
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error(
        "tokenizer.ggml.model {0:?} is not supported (supported: \"gpt2\" byte-level BPE, \
         \"llama\" SentencePiece)"
    )]
    UnsupportedModel(String),
    #[error(
        "tokenizer.ggml.pre {0:?} is not supported (supported: default, gpt-2, smollm, qwen2, \
         llama-bpe and their aliases; see PreTokenizer)"
    )]
    UnsupportedPreTokenizer(String),
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    #[error("vocabulary of {0} tokens does not fit 32-bit token ids")]
    VocabTooLarge(usize),
    #[error("{key} must be an array of {expected}")]
    WrongArrayType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("{key} has {found} entries but tokenizer.ggml.tokens has {expected}")]
    LengthMismatch {
        key: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("token {id} has the same text {text:?} as token {first}")]
    DuplicateToken { id: u32, first: u32, text: String },
    #[error("{key} = {id} is outside the vocabulary of {n_vocab} tokens")]
    SpecialIdOutOfRange {
        key: &'static str,
        id: usize,
        n_vocab: usize,
    },
    #[error("the metadata asks to add a {what} token but the vocabulary has none")]
    MissingSpecial { what: &'static str },
}
