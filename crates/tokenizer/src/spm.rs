//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`), as llama.cpp's
//! `llm_tokenizer_spm_session` does it (Kudo & Richardson 2018 for the model;
//! the algorithm is llama.cpp's, not sentencepiece's library).
//!
//! The text (spaces already escaped to `▁`) starts as one symbol per UTF-8
//! character; repeatedly the adjacent pair whose concatenation is a token with
//! the highest score is merged (ties: leftmost). Each final symbol is its
//! token, or, when it is not one, its bytes as `<0xXX>` byte-fallback tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::vocab::Vocab;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

/// A candidate merge; the queue pops the highest score, then the leftmost.
struct Pair {
    score: f32,
    left: u32,
    right: u32,
    len: u32,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

/// Byte-fallback tokens: `<0xXX>`, else the byte itself as a one-character
/// token (ASCII only), else the unknown token.
pub(crate) fn byte_tokens(vocab: &Vocab) -> [Option<u32>; 256] {
    let mut table = [None; 256];
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u8;
        *slot = vocab
            .id(&format!("<0x{b:02X}>"))
            .or_else(|| b.is_ascii().then(|| vocab.id(&char::from(b).to_string()))?)
            .or(vocab.special.unk);
    }
    table
}

fn push_pair(
    vocab: &Vocab,
    text: &str,
    syms: &[Symbol],
    queue: &mut BinaryHeap<Pair>,
    l: u32,
    r: u32,
) {
    if l == NONE || r == NONE {
        return;
    }
    let (ls, rs) = (syms[l as usize], syms[r as usize]);
    let span = &text[ls.start as usize..(rs.start + rs.len) as usize];
    if let Some(id) = vocab.id(span) {
        queue.push(Pair {
            score: vocab.scores[id as usize],
            left: l,
            right: r,
            len: ls.len + rs.len,
        });
    }
}

/// Tokenizes one text fragment (spaces already `▁`) and appends the ids.
pub(crate) fn encode(vocab: &Vocab, bytes: &[Option<u32>; 256], text: &str, out: &mut Vec<u32>) {
    let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let idx = syms.len() as u32;
        syms.push(Symbol {
            start: i as u32,
            len: c.len_utf8() as u32,
            prev: if idx == 0 { NONE } else { idx - 1 },
            next: idx + 1,
        });
    }
    let Some(last) = syms.last_mut() else {
        return;
    };
    last.next = NONE;

    let mut queue = BinaryHeap::with_capacity(syms.len());
    for i in 1..syms.len() as u32 {
        push_pair(vocab, text, &syms, &mut queue, i - 1, i);
    }
    while let Some(pair) = queue.pop() {
        let (l, r) = (syms[pair.left as usize], syms[pair.right as usize]);
        if l.len == 0 || r.len == 0 || l.len + r.len != pair.len {
            continue;
        }
        let merged = &mut syms[pair.left as usize];
        merged.len = pair.len;
        merged.next = r.next;
        syms[pair.right as usize].len = 0;
        if r.next != NONE {
            syms[r.next as usize].prev = pair.left;
        }
        push_pair(vocab, text, &syms, &mut queue, l.prev, pair.left);
        push_pair(vocab, text, &syms, &mut queue, pair.left, r.next);
    }

    for sym in syms.iter().filter(|s| s.len > 0) {
        let piece = &text[sym.start as usize..(sym.start + sym.len) as usize];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| bytes[b as usize])),
        }
    }
}
