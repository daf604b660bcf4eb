//! Tokenizers read from GGUF metadata, streaming UTF-8 decode and chat templates.
//!
//! [`Tokenizer::from_gguf`] reads `tokenizer.ggml.*` and gives token ids
//! identical to llama.cpp's `llama_tokenize(vocab, text, add_special,
//! parse_special)` for the byte-level BPE vocabularies (`gpt2`, with the
//! pre-tokenizers in [`PreTokenizer`]) and SentencePiece ones (`llama`, e.g.
//! Gemma 3). The pipeline, as in llama.cpp's `src/llama-vocab.cpp`:
//!
//! 1. special tokens are cut out of the text (`special.rs`);
//! 2. each remaining fragment is split into words (`pretokenize.rs`, BPE only)
//!    and merged (`bpe.rs`), or merged as a whole by score (`spm.rs`);
//! 3. BOS/EOS are added when `add_special` is set and the metadata asks.
//!
//! Decoding renders each token as its piece (bytes) and joins them;
//! [`StreamDecoder`] does it one token at a time with only whole characters.

mod bpe;
pub mod chat;
mod error;
mod hash;
mod pretokenize;
mod special;
mod spm;
mod stream;
mod ucd;
mod vocab;

pub use error::TokenizerError;
pub use pretokenize::PreTokenizer;
pub use stream::StreamDecoder;
pub use vocab::ModelKind;

use troupe_gguf::{Array, GgufFile};

use crate::bpe::Bpe;
use crate::special::{Fragment, SpecialTokens};
use crate::vocab::{attr, Vocab};

/// The merge algorithm with its tables.
enum Engine {
    Bpe(Box<Bpe>),
    Spm {
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A tokenizer built from a model's GGUF metadata.
pub struct Tokenizer {
    vocab: Vocab,
    engine: Engine,
    special: SpecialTokens,
    /// Every token's piece with special tokens rendered, concatenated;
    /// token `i` is `pieces[piece_offs[i]..piece_offs[i + 1]]`.
    pieces: Vec<u8>,
    piece_offs: Vec<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos())
            .field("eos", &self.eos())
            .field("eog", &self.vocab.eog)
            .finish()
    }
}

const KEY_MERGES: &str = "tokenizer.ggml.merges";

impl Tokenizer {
    /// Reads the tokenizer from `tokenizer.ggml.*` metadata.
    ///
    /// `tokenizer.ggml.model` must be `gpt2` (byte-level BPE) or `llama`
    /// (SentencePiece). For BPE a missing `tokenizer.ggml.pre` means the
    /// [`PreTokenizer::Default`] splitter, as in llama.cpp (which warns that
    /// quality degrades); a name outside [`PreTokenizer`]'s families is
    /// [`TokenizerError::UnsupportedPreTokenizer`].
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::from_gguf(gguf)?;
        let engine = match vocab.kind {
            ModelKind::Bpe(pre) => {
                let merges = match gguf.array(KEY_MERGES)? {
                    Array::String(m) => m.as_slice(),
                    _ => {
                        return Err(TokenizerError::WrongArrayType {
                            key: KEY_MERGES,
                            expected: "strings",
                        })
                    }
                };
                Engine::Bpe(Box::new(Bpe::new(
                    pre,
                    &vocab.texts,
                    merges,
                    vocab.ignore_merges,
                )))
            }
            ModelKind::Spm => Engine::Spm {
                byte_tokens: Box::new(spm::byte_tokens(&vocab)),
            },
        };
        let special = SpecialTokens::new(&vocab);
        let (pieces, piece_offs) = render_pieces(&vocab);
        Ok(Tokenizer {
            vocab,
            engine,
            special,
            pieces,
            piece_offs,
        })
    }

    /// Tokenizes a rendered chat prompt: special tokens are parsed and BOS is
    /// added as the metadata asks, unless the template already wrote one.
    pub fn encode_chat(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text, true, true);
        if let Some(bos) = self.bos() {
            if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
        ids
    }

    /// Tokenizes `text` like llama.cpp's `llama_tokenize`: `add_special`
    /// adds BOS and/or EOS where the metadata asks for them
    /// (`add_bos_token`, `add_eos_token`), `parse_special` lets control tokens
    /// written in the text (`<|im_start|>`, `<start_of_turn>`) become those
    /// tokens. User-defined tokens are matched in either case.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.extend(v.special.bos);
        }
        let frags = self.special.partition(v, text, parse_special);
        match &self.engine {
            Engine::Bpe(bpe) => {
                let mut words = Vec::new();
                let mut scratch = bpe::Scratch::default();
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(range) => {
                            let fragment = &text[range];
                            words.clear();
                            bpe.pre.split_ranges(fragment, &mut words);
                            for w in &words {
                                let word = &fragment.as_bytes()[w.clone()];
                                bpe.encode_word(word, &mut out, &mut scratch);
                            }
                        }
                    }
                }
            }
            Engine::Spm { byte_tokens } => {
                // A space goes before the first fragment and before every
                // fragment that follows a special token.
                let mut after_special = true;
                let mut buf = String::new();
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Fragment::Text(range) => {
                            buf.clear();
                            if v.add_space_prefix && after_special {
                                buf.push('▁');
                            }
                            for c in text[range].chars() {
                                buf.push(if c == ' ' { '▁' } else { c });
                            }
                            spm::encode(v, byte_tokens, &buf, &mut out);
                            after_special = false;
                        }
                    }
                }
            }
        }
        if add_special && v.add_eos {
            out.extend(v.special.eos);
        }
        out
    }

    /// The bytes token `id` stands for. Control and unknown tokens are empty
    /// unless `special`, then their text; user-defined tokens are always
    /// their text. Unknown ids are empty.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i >= self.vocab.n_tokens()
            || (!special && self.vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0)
        {
            return &[];
        }
        &self.pieces[self.piece_offs[i]..self.piece_offs[i + 1]]
    }

    /// Joins the pieces of `ids` like llama.cpp's `llama_detokenize` with
    /// `remove_special = false`: one leading space is dropped from the first
    /// piece when the vocabulary adds a space prefix, and vocabularies with
    /// `clean_spaces` get llama.cpp's clean-up (` .` to `.`, ` 's` to `'s`, ...).
    pub fn decode_bytes(&self, ids: &[u32], special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let mut piece = self.token_to_piece(id, special);
            if i == 0 && self.vocab.add_space_prefix {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            out.extend_from_slice(piece);
        }
        if self.vocab.clean_spaces {
            clean_spaces(&mut out);
        }
        out
    }

    /// [`decode_bytes`](Self::decode_bytes) without control tokens, as text;
    /// invalid UTF-8 (a character cut off at the end) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, false)).into_owned()
    }

    /// A decoder for streaming generated tokens as text.
    pub fn stream_decoder(&self, special: bool) -> StreamDecoder<&Tokenizer> {
        StreamDecoder::new(self, special)
    }

    /// The token's text in the vocabulary (GPT-2 byte-encoded for BPE, `▁`
    /// for spaces in SentencePiece).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// The token whose vocabulary text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.n_tokens()
    }

    pub fn kind(&self) -> ModelKind {
        self.vocab.kind
    }

    pub fn bos(&self) -> Option<u32> {
        self.vocab.special.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.vocab.special.eos
    }

    /// End of turn: `tokenizer.ggml.eot_token_id`, else a token named like
    /// `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`.
    pub fn eot(&self) -> Option<u32> {
        self.vocab.special.eot
    }

    pub fn unk(&self) -> Option<u32> {
        self.vocab.special.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.vocab.special.pad
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }

    /// Whether generation stops at `id` (EOS, EOT, EOM and the tokens
    /// llama.cpp lists by text: `<|im_end|>`, `<end_of_turn>`,
    /// `<|endoftext|>`, FIM pad/repo/separator, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation tokens, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// Whether `id` is a control token (rendered only on request).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::CONTROL != 0
    }
}

/// Pieces of all tokens with special tokens rendered (llama.cpp's
/// `token_to_piece(special = true)` cache).
fn render_pieces(vocab: &Vocab) -> (Vec<u8>, Vec<usize>) {
    let bpe = matches!(vocab.kind, ModelKind::Bpe(_));
    let decoded: Vec<Vec<u8>> = if bpe {
        bpe::decode_token_texts(&vocab.texts)
    } else {
        Vec::new()
    };
    let mut pieces = Vec::new();
    let mut offs = Vec::with_capacity(vocab.n_tokens() + 1);
    offs.push(0);
    for (i, text) in vocab.texts.iter().enumerate() {
        let a = vocab.attrs[i];
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            pieces.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match decoded.get(i) {
                Some(raw) => pieces.extend_from_slice(raw),
                None => pieces.extend_from_slice(text.replace('▁', " ").as_bytes()),
            }
        } else if a & attr::BYTE != 0 {
            pieces.push(byte_token_value(text));
        }
        offs.push(pieces.len());
    }
    (pieces, offs)
}

/// The byte of a `<0xXX>` token (llama.cpp: `strtol` of characters 3..5,
/// 0 when they are not hex).
fn byte_token_value(text: &str) -> u8 {
    let hex = text.get(3..5).unwrap_or("");
    let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    u8::from_str_radix(&digits, 16).unwrap_or(0)
}

/// llama.cpp's `clean_spaces` passes over detokenized bytes, done in place
/// the same way (each pass reads bytes that earlier steps may have changed).
fn clean_spaces(text: &mut Vec<u8>) {
    // Drop the space in " ?", " !", " .", " ,".
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);

    // " ' " becomes "'".
    let n = text.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    text.truncate(total);

    // " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it).
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = text[i + 2];
                if matches!((x1, x2), (b'r', b'e') | (b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaned(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    #[test]
    fn clean_spaces_matches_llama_cpp() {
        assert_eq!(cleaned("Hello , world !"), "Hello, world!");
        assert_eq!(cleaned("a ' b"), "a'b");
        assert_eq!(
            cleaned("it 's I 'm we 're they 've"),
            "it's I'm we're they've"
        );
        assert_eq!(cleaned("don 't I 'd we 'll"), "don 't I 'd we 'll");
        assert_eq!(cleaned(" ' ' "), "'' ");
        assert_eq!(cleaned(""), "");
    }

    #[test]
    fn tokenizer_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Tokenizer>();
        shareable::<StreamDecoder<&'static Tokenizer>>();
        shareable::<StreamDecoder<std::sync::Arc<Tokenizer>>>();
    }

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value("<0x41>"), 0x41);
        assert_eq!(byte_token_value("<0xfF>"), 0xff);
        assert_eq!(byte_token_value("<0xZ1>"), 0);
        assert_eq!(byte_token_value("<0x"), 0);
    }
}
