//! Byte-level BPE (GPT-2, `tokenizer.ggml.model = gpt2`).
//!
//! Vocabulary and merges are stored in GPT-2's byte-to-unicode encoding
//! (Radford et al. 2019, `encoder.py`: printable Latin-1 bytes stand for
//! themselves, the 68 others for U+0100..U+0143). llama.cpp encodes each word
//! that way and runs the merges on the encoded text, one symbol per byte,
//! always merging the adjacent pair of lowest rank (ties: leftmost) until no
//! pair is in the merge list (`llm_tokenizer_bpe_session::tokenize`).
//!
//! The encoding is a bijection on bytes, so we decode vocabulary and merges
//! back to raw bytes once at load time and merge raw bytes: every token and
//! every half or result of a merge gets a "piece" id (token ids for pieces
//! that are tokens), merges become a map from a pair of piece ids to rank and
//! result, and a word is merged with a priority queue over a linked list of
//! symbols.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::hash::FastMap;
use crate::pretokenize::PreTokenizer;

const NONE: u32 = u32::MAX;

/// Bytes that GPT-2's encoding keeps as the code point of the same value.
fn printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// The code point that stands for byte `b`.
#[cfg(test)]
fn byte_to_char(b: u8) -> char {
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte that code point `c` stands for, if any.
fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return printable(b).then_some(b);
    }
    let rank = cp.checked_sub(256)? as usize;
    (0..=255u8).filter(|&b| !printable(b)).nth(rank)
}

/// Table form of [`char_to_byte`] for U+0000..U+0143.
struct ByteDecoder {
    table: [Option<u8>; 324],
}

impl ByteDecoder {
    fn new() -> Self {
        let mut table = [None; 324];
        for (cp, slot) in table.iter_mut().enumerate() {
            *slot = char::from_u32(cp as u32).and_then(char_to_byte);
        }
        ByteDecoder { table }
    }

    fn byte(&self, c: char) -> Option<u8> {
        self.table.get(c as usize).copied().flatten()
    }

    /// Raw bytes of an encoded string, if every code point stands for a byte.
    fn decode(&self, s: &str) -> Option<Vec<u8>> {
        s.chars().map(|c| self.byte(c)).collect()
    }

    /// Appends the raw bytes of `s` to `out`; false if a code point stands
    /// for no byte.
    fn decode_into(&self, s: &str, out: &mut Vec<u8>) -> bool {
        for c in s.chars() {
            match self.byte(c) {
                Some(b) => out.push(b),
                None => return false,
            }
        }
        true
    }
}

/// The piece of a normal BPE token: its raw bytes, with llama.cpp's
/// `[UNK_BYTE_0x..]` marker for code points outside the byte encoding.
pub(crate) fn decode_token_text(text: &str) -> Vec<u8> {
    let dec = ByteDecoder::new();
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match dec.byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// Decodes every token text at once (one byte table for the whole vocabulary).
pub(crate) fn decode_token_texts(texts: &[String]) -> Vec<Vec<u8>> {
    let dec = ByteDecoder::new();
    texts
        .iter()
        .map(|t| dec.decode(t).unwrap_or_else(|| decode_token_text(t)))
        .collect()
}

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    piece: u32,
}

/// A candidate merge: (rank, left, right, merged length, result piece); the
/// queue pops the smallest rank, then the leftmost.
type Candidate = Reverse<(u32, u32, u32, u32, u32)>;

/// Reusable buffers for merging words.
#[derive(Default)]
pub(crate) struct Scratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Candidate>,
}

pub(crate) struct Bpe {
    pub pre: PreTokenizer,
    /// Raw bytes of tokens and merge parts to piece ids; ids below `n_vocab`
    /// are token ids.
    pieces: FastMap<Box<[u8]>, u32>,
    /// (left piece, right piece) to (rank, merged piece).
    merges: FastMap<(u32, u32), (u32, u32)>,
    byte_piece: [u32; 256],
    n_vocab: u32,
    ignore_merges: bool,
}

impl Bpe {
    /// Builds the merge tables from token texts and `tokenizer.ggml.merges`
    /// entries (`"left right"`, both GPT-2 encoded; rank = position).
    pub fn new(pre: PreTokenizer, texts: &[String], merges: &[String], ignore_merges: bool) -> Bpe {
        let dec = ByteDecoder::new();
        let n_vocab = texts.len() as u32;
        let mut pieces: FastMap<Box<[u8]>, u32> = FastMap::default();
        pieces.reserve(texts.len() + merges.len());
        for (id, text) in texts.iter().enumerate() {
            if let Some(raw) = dec.decode(text) {
                pieces.entry(raw.into_boxed_slice()).or_insert(id as u32);
            }
        }
        let mut next_piece = n_vocab;
        let mut intern = |raw: &[u8]| -> u32 {
            if let Some(&p) = pieces.get(raw) {
                return p;
            }
            pieces.insert(raw.into(), next_piece);
            next_piece += 1;
            next_piece - 1
        };
        let mut merge_map = FastMap::default();
        merge_map.reserve(merges.len());
        let mut joined = Vec::new();
        for (rank, entry) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let Some(split) = entry.as_bytes().iter().skip(1).position(|&b| b == b' ') else {
                continue;
            };
            let (left, right) = (&entry[..split + 1], &entry[split + 2..]);
            joined.clear();
            if !dec.decode_into(left, &mut joined) {
                continue; // cannot occur in byte-encoded text
            }
            let cut = joined.len();
            if !dec.decode_into(right, &mut joined) || cut == 0 || cut == joined.len() {
                continue;
            }
            let (l, r) = (intern(&joined[..cut]), intern(&joined[cut..]));
            let j = intern(&joined);
            merge_map.entry((l, r)).or_insert((rank as u32, j));
        }
        let mut byte_piece = [NONE; 256];
        for (b, slot) in byte_piece.iter_mut().enumerate() {
            if let Some(&p) = pieces.get(&[b as u8][..]) {
                *slot = p;
            }
        }
        Bpe {
            pre,
            pieces,
            merges: merge_map,
            byte_piece,
            n_vocab,
            ignore_merges,
        }
    }

    /// The token whose raw bytes are `raw`, if any.
    fn token(&self, raw: &[u8]) -> Option<u32> {
        self.pieces.get(raw).copied().filter(|&p| p < self.n_vocab)
    }

    fn push_pair(&self, sc: &mut Scratch, left: u32, right: u32) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (sc.symbols[left as usize], sc.symbols[right as usize]);
        if let Some(&(rank, joined)) = self.merges.get(&(l.piece, r.piece)) {
            sc.queue
                .push(Reverse((rank, left, right, l.len + r.len, joined)));
        }
    }

    /// Merges one pre-tokenized word (raw bytes) and appends its tokens.
    pub fn encode_word(&self, word: &[u8], out: &mut Vec<u32>, sc: &mut Scratch) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(id) = self.token(word) {
                out.push(id);
                return;
            }
        }
        let n = word.len() as u32;
        sc.symbols.clear();
        sc.queue.clear();
        sc.symbols.extend(word.iter().enumerate().map(|(i, &b)| {
            let i = i as u32;
            Symbol {
                start: i,
                len: 1,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                piece: self.byte_piece[b as usize],
            }
        }));
        for i in 1..n {
            self.push_pair(sc, i - 1, i);
        }
        while let Some(Reverse((_, left, right, len, joined))) = sc.queue.pop() {
            let (l, r) = (sc.symbols[left as usize], sc.symbols[right as usize]);
            // A pair is stale once either side has changed.
            if l.len == 0 || r.len == 0 || l.len + r.len != len {
                continue;
            }
            let merged = &mut sc.symbols[left as usize];
            merged.len = len;
            merged.piece = joined;
            merged.next = r.next;
            sc.symbols[right as usize].len = 0;
            if r.next != NONE {
                sc.symbols[r.next as usize].prev = left;
            }
            self.push_pair(sc, l.prev, left);
            self.push_pair(sc, left, r.next);
        }
        for sym in sc.symbols.iter().filter(|s| s.len > 0) {
            if sym.piece < self.n_vocab {
                out.push(sym.piece);
                continue;
            }
            // Not a token: llama.cpp looks up each byte of the encoded text
            // alone, which finds only printable ASCII bytes.
            let bytes = &word[sym.start as usize..(sym.start + sym.len) as usize];
            for &b in bytes {
                if (0x21..=0x7e).contains(&b) {
                    out.extend(self.token(&[b]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_encoding_is_gpt2s() {
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0x00), 'Ā');
        assert_eq!(byte_to_char(0xad), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('▁'), None);
    }

    #[test]
    fn decode_marks_foreign_code_points() {
        assert_eq!(decode_token_text("ĠhiĊ"), b" hi\n");
        assert_eq!(
            decode_token_text("a▁"),
            b"a[UNK_BYTE_0xe29681a\xe2\x96\x81]"
        );
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_lowest_rank_first() {
        let texts = strings(&["a", "b", "c", "ab", "bc", "abc"]);
        let merges = strings(&["b c", "a b", "a bc"]);
        let bpe = Bpe::new(PreTokenizer::Gpt2, &texts, &merges, false);
        let mut out = Vec::new();
        let mut sc = Scratch::default();
        bpe.encode_word(b"abc", &mut out, &mut sc);
        assert_eq!(out, [5]); // b+c first, then a+bc
        out.clear();
        bpe.encode_word(b"abab", &mut out, &mut sc);
        assert_eq!(out, [3, 3]);
        out.clear();
        // "x" has no token: dropped like llama.cpp's per-byte fallback.
        bpe.encode_word(b"axb", &mut out, &mut sc);
        assert_eq!(out, [0, 1]);
    }

    #[test]
    fn merge_result_that_is_not_a_token_falls_back_to_bytes() {
        let texts = strings(&["a", "b"]);
        let merges = strings(&["a b"]);
        let bpe = Bpe::new(PreTokenizer::Gpt2, &texts, &merges, false);
        let mut out = Vec::new();
        bpe.encode_word(b"ab", &mut out, &mut Scratch::default());
        assert_eq!(out, [0, 1]);
    }
}
