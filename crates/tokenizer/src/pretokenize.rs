//! Pre-tokenizers of byte-level BPE vocabularies: the regex word splits that
//! run before the BPE merges, one per `tokenizer.ggml.pre` family.
//!
//! llama.cpp (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`) applies a list of
//! regexes in turn, each one re-splitting the pieces of the previous one; the
//! common ones run through hand-written matchers in `src/unicode.cpp`
//! (`unicode_regex_split_custom_gpt2/llama3/qwen2`), the others through
//! `std::regex` over a "collapsed" text where every non-ASCII code point is
//! replaced by a byte standing for its category. We follow those semantics,
//! hand-written throughout (no regex engine):
//!
//! - a regex splits each piece into its matches and the gaps between them,
//!   and both become pieces;
//! - `\s+(?!\S)` at the end of a piece takes the whole whitespace run (the
//!   look-ahead cannot see past the piece), otherwise all but the last
//!   whitespace, which then starts the next word (` word`);
//! - unassigned code points count as "other" (`[^\s\p{L}\p{N}]`).
//!
//! | variant | regexes (llama.cpp) |
//! | --- | --- |
//! | `Gpt2` | `'s\|'t\|'re\|'ve\|'m\|'ll\|'d\| ?\p{L}+\| ?\p{N}+\| ?[^\s\p{L}\p{N}]+\|\s+(?!\S)` |
//! | `Smollm` | `\p{N}` (each digit alone), then the GPT-2 one |
//! | `Llama3` | `(?i:'s\|'t\|'re\|'ve\|'m\|'ll\|'d)\|[^\r\n\p{L}\p{N}]?\p{L}+\|\p{N}{1,3}\| ?[^\s\p{L}\p{N}]+[\r\n]*\|\s*[\r\n]+\|\s+(?!\S)\|\s+` |
//! | `Qwen2` | as `Llama3` with `\p{N}` (one digit) instead of `\p{N}{1,3}` |
//! | `Default` | `[\p{P}$+<=>^~\|]+`, the GPT-2 one, `\p{N}+`, `[0-9][0-9][0-9]` |

use std::ops::Range;

use crate::ucd::{classify, CharInfo};

/// A word splitter, named after llama.cpp's pre-tokenizer families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// llama.cpp's fallback (`default`, or no `tokenizer.ggml.pre`).
    Default,
    /// GPT-2 (`gpt-2`, `mpt`, `olmo`, `phi-2`, ...).
    Gpt2,
    /// GPT-2 with every digit split off (`smollm`, `starcoder`, `refact`, ...).
    Smollm,
    /// Llama 3 (`llama-bpe`, `llama3`, `dbrx`, `smaug-bpe`, ...).
    Llama3,
    /// Qwen 2 (`qwen2`, `stablelm2`, `deepseek-r1-qwen`, ...).
    Qwen2,
}

/// The text as code points with their classes and byte offsets.
struct Chars {
    cps: Vec<char>,
    info: Vec<CharInfo>,
    /// Byte offset of each code point, plus the text length at the end.
    offs: Vec<usize>,
}

impl Chars {
    fn new(text: &str) -> Self {
        let n = text.len();
        let mut cps = Vec::with_capacity(n);
        let mut info = Vec::with_capacity(n);
        let mut offs = Vec::with_capacity(n + 1);
        for (i, c) in text.char_indices() {
            cps.push(c);
            info.push(classify(c));
            offs.push(i);
        }
        offs.push(n);
        Chars { cps, info, offs }
    }

    fn len(&self) -> usize {
        self.cps.len()
    }
}

/// Collects piece lengths (in code points) inside one chunk.
struct Emitter<'o> {
    out: &'o mut Vec<usize>,
    prev: usize,
}

impl Emitter<'_> {
    /// Ends the current piece at `end` (empty pieces are dropped).
    fn emit(&mut self, end: usize) {
        if end > self.prev {
            self.out.push(end - self.prev);
        }
        self.prev = end;
    }
}

/// Walks chunk lengths as `(start, end)` code point bounds.
fn bounds(chunks: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    chunks.iter().scan(0usize, |start, &len| {
        let ini = *start;
        *start += len;
        Some((ini, ini + len))
    })
}

impl PreTokenizer {
    /// Splits `text` into the words that BPE merges run on.
    pub fn split(self, text: &str) -> Vec<&str> {
        let mut ranges = Vec::new();
        self.split_ranges(text, &mut ranges);
        ranges.into_iter().map(|r| &text[r]).collect()
    }

    /// Appends the byte ranges of the words of `text` to `out`.
    pub(crate) fn split_ranges(self, text: &str, out: &mut Vec<Range<usize>>) {
        if text.is_empty() {
            return;
        }
        let ch = Chars::new(text);
        let whole = vec![ch.len()];
        let chunks = match self {
            PreTokenizer::Gpt2 => gpt2(&ch, &whole),
            PreTokenizer::Smollm => gpt2(&ch, &isolate(&ch, &whole, single_number)),
            PreTokenizer::Llama3 => llama3(&ch, &whole, 3),
            PreTokenizer::Qwen2 => llama3(&ch, &whole, 1),
            PreTokenizer::Default => {
                let c = isolate(&ch, &whole, punctuation_run);
                let c = gpt2(&ch, &c);
                let c = isolate(&ch, &c, number_run);
                isolate(&ch, &c, three_ascii_digits)
            }
        };
        let mut start = 0;
        for len in chunks {
            out.push(ch.offs[start]..ch.offs[start + len]);
            start += len;
        }
    }
}

/// Splits each chunk into the matches of `matcher` and the gaps between them
/// (the `std::regex` path of llama.cpp). `matcher(ch, pos, end)` gives the
/// length of a match starting at `pos`, if one does.
fn isolate(
    ch: &Chars,
    chunks: &[usize],
    matcher: fn(&Chars, usize, usize) -> Option<usize>,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(chunks.len());
    for (ini, end) in bounds(chunks) {
        let mut em = Emitter {
            out: &mut out,
            prev: ini,
        };
        let mut pos = ini;
        while pos < end {
            match matcher(ch, pos, end) {
                Some(len) => {
                    em.emit(pos);
                    pos += len;
                    em.emit(pos);
                }
                None => pos += 1,
            }
        }
        em.emit(end);
    }
    out
}

/// `\p{N}`: one number code point.
fn single_number(ch: &Chars, pos: usize, _end: usize) -> Option<usize> {
    ch.info[pos].is_number().then_some(1)
}

/// Length of the run of code points from `pos` satisfying `pred`.
fn run(ch: &Chars, pos: usize, end: usize, pred: impl Fn(char, CharInfo) -> bool) -> usize {
    (pos..end)
        .take_while(|&p| pred(ch.cps[p], ch.info[p]))
        .count()
}

/// `\p{N}+`.
fn number_run(ch: &Chars, pos: usize, end: usize) -> Option<usize> {
    let n = run(ch, pos, end, |_, i| i.is_number());
    (n > 0).then_some(n)
}

/// `[\p{P}\$\+<=>\^~\|]+`.
fn punctuation_run(ch: &Chars, pos: usize, end: usize) -> Option<usize> {
    let n = run(ch, pos, end, |c, i| {
        i.is_punctuation() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
    });
    (n > 0).then_some(n)
}

/// `[0-9][0-9][0-9]`.
fn three_ascii_digits(ch: &Chars, pos: usize, end: usize) -> Option<usize> {
    (pos + 3 <= end && ch.cps[pos..pos + 3].iter().all(char::is_ascii_digit)).then_some(3)
}

/// Bounds-checked view of one chunk: positions past its end read as "none",
/// like llama.cpp's `OUT_OF_RANGE` (flags 0, so no class matches).
struct Chunk<'c> {
    ch: &'c Chars,
    end: usize,
}

impl Chunk<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (pos < self.end).then(|| self.ch.cps[pos])
    }

    fn info(&self, pos: usize) -> Option<CharInfo> {
        (pos < self.end).then(|| self.ch.info[pos])
    }

    fn letter(&self, pos: usize) -> bool {
        self.info(pos).is_some_and(CharInfo::is_letter)
    }

    fn number(&self, pos: usize) -> bool {
        self.info(pos).is_some_and(CharInfo::is_number)
    }

    fn space(&self, pos: usize) -> bool {
        self.info(pos).is_some_and(|i| i.space)
    }

    /// `[^\s\p{L}\p{N}]`: any code point of the chunk that is none of those.
    fn other(&self, pos: usize) -> bool {
        self.info(pos)
            .is_some_and(|i| !(i.space || i.is_letter() || i.is_number()))
    }

    fn is(&self, run: Run, pos: usize) -> bool {
        match run {
            Run::Letter => self.letter(pos),
            Run::Number => self.number(pos),
            Run::Other => self.other(pos),
        }
    }

    /// Length of a contraction (`'s 't 're 've 'm 'll 'd`) at `pos`, with the
    /// letters compared after `fold` (identity or ASCII lower-casing).
    fn contraction(&self, pos: usize, fold: fn(char) -> char) -> Option<usize> {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return None;
        }
        let next = fold(self.ch.cps[pos + 1]);
        if matches!(next, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        if pos + 2 < self.end {
            let next2 = fold(self.ch.cps[pos + 2]);
            if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return Some(3);
            }
        }
        None
    }

    /// Length of the whitespace run at `pos`.
    fn space_run(&self, pos: usize) -> usize {
        (pos..self.end).take_while(|&p| self.space(p)).count()
    }
}

/// The classes of GPT-2's ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`.
#[derive(Clone, Copy)]
enum Run {
    Letter,
    Number,
    Other,
}

/// The GPT-2 regex (`unicode_regex_split_custom_gpt2`).
fn gpt2(ch: &Chars, chunks: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(chunks.len());
    for (ini, end) in bounds(chunks) {
        let k = Chunk { ch, end };
        let mut em = Emitter {
            out: &mut out,
            prev: ini,
        };
        let mut pos = ini;
        while pos < end {
            let cpt = ch.cps[pos];
            // 's|'t|'re|'ve|'m|'ll|'d
            if let Some(n) = k.contraction(pos, |c| c) {
                pos += n;
                em.emit(pos);
                continue;
            }
            // An optional leading space is judged by the code point after it.
            let lead = usize::from(cpt == ' ');
            let probe = pos + lead;
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            let class_run = if k.letter(probe) {
                Some(Run::Letter)
            } else if k.number(probe) {
                Some(Run::Number)
            } else if k.other(probe) {
                Some(Run::Other)
            } else {
                None
            };
            if let Some(run) = class_run {
                pos = probe;
                while k.is(run, pos) {
                    pos += 1;
                }
                em.emit(pos);
                continue;
            }
            pos = whitespace(&k, pos, &mut em, false);
        }
        em.emit(end);
    }
    out
}

/// Ends a whitespace match at `pos`: `\s*[\r\n]+` (when `newlines`), then
/// `\s+(?!\S)`, then `\s+`; a lone code point that matched nothing becomes
/// its own piece. Returns the new position.
fn whitespace(k: &Chunk<'_>, pos: usize, em: &mut Emitter<'_>, newlines: bool) -> usize {
    let n = k.space_run(pos);
    if newlines {
        let last_newline = (pos..pos + n)
            .rev()
            .find(|&p| matches!(k.ch.cps[p], '\r' | '\n'));
        if let Some(p) = last_newline {
            em.emit(p + 1);
            return p + 1;
        }
    }
    let next = if n > 1 && pos + n < k.end {
        pos + n - 1
    } else if n > 0 {
        pos + n
    } else {
        pos + 1
    };
    em.emit(next);
    next
}

/// The Llama 3 regex (`unicode_regex_split_custom_llama3`); `max_digits` is 3
/// for `\p{N}{1,3}` and 1 for Qwen 2's `\p{N}`.
fn llama3(ch: &Chars, chunks: &[usize], max_digits: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(chunks.len());
    for (ini, end) in bounds(chunks) {
        let k = Chunk { ch, end };
        let mut em = Emitter {
            out: &mut out,
            prev: ini,
        };
        let mut pos = ini;
        while pos < end {
            let cpt = ch.cps[pos];
            let info = ch.info[pos];
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if let Some(n) = k.contraction(pos, |c| c.to_ascii_lowercase()) {
                pos += n;
                em.emit(pos);
                continue;
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cpt == '\r' || cpt == '\n' || info.is_number())
                && (info.is_letter() || k.letter(pos + 1))
            {
                pos += 1;
                while k.letter(pos) {
                    pos += 1;
                }
                em.emit(pos);
                continue;
            }
            // \p{N}{1,max_digits}
            if info.is_number() {
                let mut start = pos;
                while k.number(pos) {
                    pos += 1;
                    if pos - start >= max_digits {
                        em.emit(pos);
                        start = pos;
                    }
                }
                em.emit(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; after a space the next code point
            // decides, and a space that ends the chunk is taken alone.
            let probe = pos + usize::from(cpt == ' ');
            let probe_info = k.info(probe);
            if !probe_info.is_some_and(|i| i.space || i.is_letter() || i.is_number()) {
                pos = probe;
                while k.other(pos) {
                    pos += 1;
                }
                while matches!(k.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                em.emit(pos);
                continue;
            }
            pos = whitespace(&k, pos, &mut em, true);
        }
        em.emit(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::PreTokenizer::{self, *};

    fn check(pre: PreTokenizer, text: &str, want: &[&str]) {
        assert_eq!(pre.split(text), want, "{pre:?} on {text:?}");
        assert_eq!(pre.split(text).concat(), text);
    }

    #[test]
    fn gpt2_words_and_spaces() {
        check(Gpt2, "Hello world", &["Hello", " world"]);
        check(Gpt2, "a   b", &["a", "  ", " b"]);
        check(Gpt2, "end   ", &["end", "   "]);
        check(Gpt2, "x\n\ny", &["x", "\n", "\n", "y"]);
        check(Gpt2, "it's I'M", &["it", "'s", " I", "'", "M"]);
        check(Gpt2, "3.14 x", &["3", ".", "14", " x"]);
        check(Gpt2, " !!", &[" !!"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        check(Smollm, "abc 12345", &["abc", " ", "1", "2", "3", "4", "5"]);
        check(Smollm, "a  1", &["a", "  ", "1"]);
        check(Smollm, "x٣y", &["x", "٣", "y"]);
    }

    #[test]
    fn llama3_and_qwen2() {
        check(Llama3, "12345", &["123", "45"]);
        check(Qwen2, "123", &["1", "2", "3"]);
        check(Llama3, "Hello, WORLD'S", &["Hello", ",", " WORLD", "'S"]);
        check(Qwen2, "a\n\n  b", &["a", "\n\n", " ", " b"]);
        check(Qwen2, "  \n x", &["  \n", " x"]);
        check(Qwen2, "foo();\n", &["foo", "();\n"]);
        check(Qwen2, "\tif", &["\tif"]);
        check(Qwen2, "a \u{1c89}", &["a", " \u{1c89}"]);
        check(Qwen2, "end ", &["end", " "]);
    }

    #[test]
    fn default_regex_list() {
        check(
            Default,
            "a+b=1234567",
            &["a", "+", "b", "=", "123", "456", "7"],
        );
        check(Default, "hi!! you", &["hi", "!!", " you"]);
    }

    #[test]
    fn empty_text_has_no_words() {
        for pre in [Default, Gpt2, Smollm, Llama3, Qwen2] {
            assert!(pre.split("").is_empty());
        }
    }
}
