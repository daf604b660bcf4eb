//! Splitting special tokens out of the text before tokenizing the rest, as
//! llama.cpp's `tokenizer_st_partition` does.
//!
//! Candidates are the control, user-defined and unknown tokens; with
//! `parse_special` off only the user-defined ones (Hugging Face `tokenizers`
//! also splits its added tokens first). llama.cpp takes the candidates longest
//! first and, for each, cuts every remaining text fragment at its leftmost
//! non-overlapping occurrences; `lstrip`/`rstrip` tokens eat the whitespace
//! beside them. The result depends on that order (with tokens `abc` and `xa`,
//! `xabc` gives `x` + `abc`), so we keep it: a trie pass first finds which
//! candidates occur at all (usually none or a few among thousands), then the
//! fragment cutting runs for those alone.

use std::ops::Range;

use crate::vocab::{attr, Vocab};

/// A piece of the input: text still to tokenize, or a special token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

#[derive(Default)]
struct Node {
    /// (byte, child index), sorted by byte.
    children: Vec<(u8, u32)>,
    /// (order, token id) of the candidate ending here.
    token: Option<(u32, u32)>,
}

pub(crate) struct SpecialTokens {
    trie: Vec<Node>,
}

impl SpecialTokens {
    pub fn new(vocab: &Vocab) -> Self {
        let special = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let mut ids: Vec<u32> = (0..vocab.n_tokens() as u32)
            .filter(|&id| vocab.attr(id) & special != 0)
            .collect();
        // Longest first; llama.cpp's sort leaves ties unordered, we take ids.
        ids.sort_by_key(|&id| (std::cmp::Reverse(vocab.texts[id as usize].len()), id));

        let mut trie = vec![Node::default()];
        for (order, &id) in ids.iter().enumerate() {
            let mut node = 0usize;
            for &b in vocab.texts[id as usize].as_bytes() {
                node = match trie[node].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => trie[node].children[i].1 as usize,
                    Err(i) => {
                        let child = trie.len();
                        trie[node].children.insert(i, (b, child as u32));
                        trie.push(Node::default());
                        child
                    }
                };
            }
            trie[node].token = Some((order as u32, id));
        }
        SpecialTokens { trie }
    }

    /// The candidates that occur in `text`, in llama.cpp's order.
    fn occurring(&self, vocab: &Vocab, text: &[u8], parse_special: bool) -> Vec<u32> {
        let mut found: Vec<(u32, u32)> = Vec::new();
        for start in 0..text.len() {
            let mut node = 0usize;
            for &b in &text[start..] {
                let children = &self.trie[node].children;
                match children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => node = children[i].1 as usize,
                    Err(_) => break,
                }
                if let Some(tok) = self.trie[node].token {
                    let skip =
                        !parse_special && vocab.attr(tok.1) & (attr::CONTROL | attr::UNKNOWN) != 0;
                    if !skip {
                        found.push(tok);
                    }
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found.into_iter().map(|(_, id)| id).collect()
    }

    /// Cuts `text` into fragments of text and special tokens.
    pub fn partition(&self, vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0..text.len())];
        for id in self.occurring(vocab, text.as_bytes(), parse_special) {
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                match frag {
                    Fragment::Text(range) => cut(vocab, text, range, id, &mut next),
                    token => next.push(token),
                }
            }
            frags = next;
        }
        frags
    }
}

/// C `isspace` in the "C" locale.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Cuts one text fragment at the occurrences of token `id`.
fn cut(vocab: &Vocab, text: &str, range: Range<usize>, id: u32, out: &mut Vec<Fragment>) {
    let needle = vocab.texts[id as usize].as_str();
    let a = vocab.attr(id);
    let bytes = text.as_bytes();
    let (mut base, end) = (range.start, range.end);
    while base < end {
        let Some(found) = text[base..end].find(needle) else {
            break;
        };
        let at = base + found;
        let mut left_end = at;
        if a & attr::LSTRIP != 0 {
            while left_end > base && c_space(bytes[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > base {
            out.push(Fragment::Text(base..left_end));
        }
        out.push(Fragment::Token(id));
        base = at + needle.len();
        if a & attr::RSTRIP != 0 {
            while base < end && c_space(bytes[base]) {
                base += 1;
            }
        }
    }
    if base < end {
        out.push(Fragment::Text(base..end));
    }
}
