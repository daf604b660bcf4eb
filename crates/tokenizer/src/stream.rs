//! Incremental detokenization for streaming output.
//!
//! A token's piece can end in the middle of a UTF-8 character (byte-level BPE
//! splits emoji and CJK across tokens; SentencePiece byte-fallback tokens
//! carry one byte each), so pieces are buffered and only whole, valid
//! characters are handed out. Bytes that can never become valid UTF-8 are
//! replaced by U+FFFD at once; an incomplete tail waits for the next token or
//! for [`StreamDecoder::finish`].
//!
//! The concatenated output equals [`Tokenizer::decode`] (same special-token
//! rendering and leading-space rule) except for the `clean_spaces` clean-up of
//! some BPE vocabularies, which needs look-ahead and is left out, as in
//! llama.cpp's own per-token streaming.

use crate::Tokenizer;
use std::ops::Deref;

/// Turns token ids, one at a time, into valid UTF-8 text. `T` is how the
/// tokenizer is held: `&Tokenizer`, or an `Arc` when the decoder must own it
/// (a server's per-request state).
pub struct StreamDecoder<T: Deref<Target = Tokenizer>> {
    tok: T,
    special: bool,
    /// Drop one leading space of the first piece (`add_space_prefix`).
    strip_space: bool,
    pending: Vec<u8>,
}

impl<T: Deref<Target = Tokenizer>> StreamDecoder<T> {
    /// A decoder for `tok`; `special` renders control tokens as their text.
    pub fn new(tok: T, special: bool) -> Self {
        let strip_space = tok.vocab.add_space_prefix;
        StreamDecoder {
            tok,
            special,
            strip_space,
            pending: Vec::new(),
        }
    }

    /// Feeds one token; returns the text that became complete (often empty
    /// while a character is split across tokens).
    pub fn push(&mut self, id: u32) -> String {
        let mut piece = self.tok.token_to_piece(id, self.special);
        if std::mem::take(&mut self.strip_space) {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        self.pending.extend_from_slice(piece);
        self.drain(false)
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: whatever is held back comes out, incomplete
    /// characters as U+FFFD.
    pub fn finish(mut self) -> String {
        self.drain(true)
    }

    /// Takes the longest decodable prefix of the buffer.
    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut pos = 0;
        while pos < self.pending.len() {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix was just checked, so this cannot fail.
                    out.push_str(
                        std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap_or(""),
                    );
                    pos += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            pos += bad;
                        }
                        None if at_end => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            pos = self.pending.len();
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }
}
