//! Unicode character classes for the pre-tokenizers.
//!
//! llama.cpp (`src/unicode.cpp`, table generated from `UnicodeData.txt` by
//! `scripts/gen-unicode-data.py`) gives each code point one general-category
//! group (`\p{L}`, `\p{N}`, `\p{M}`, `\p{P}`, `\p{S}`, `\p{Z}`, `\p{C}`, or
//! "undefined" for unassigned ones) plus the `White_Space` property for `\s`.
//! We take the categories from `unicode-properties` pinned to the same Unicode
//! version (15.1) and `White_Space` from `char::is_whitespace`, which is that
//! property. ASCII, the common case, is answered from a hand-written table.

use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// General-category group of a code point, as llama.cpp's flags see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Letter,
    Number,
    Mark,
    Punctuation,
    Symbol,
    Separator,
    /// Cc, Cf, Co, Cs.
    Control,
    /// Cn: not assigned in Unicode 15.1.
    Unassigned,
}

/// The facts about one code point that the splitters look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CharInfo {
    pub class: Class,
    /// Unicode `White_Space` (regex `\s`).
    pub space: bool,
}

impl CharInfo {
    pub fn is_letter(self) -> bool {
        self.class == Class::Letter
    }

    pub fn is_number(self) -> bool {
        self.class == Class::Number
    }

    pub fn is_punctuation(self) -> bool {
        self.class == Class::Punctuation
    }
}

/// Classifies one code point.
pub(crate) fn classify(c: char) -> CharInfo {
    if c.is_ascii() {
        return CharInfo {
            class: ascii_class(c as u8),
            space: c.is_whitespace(),
        };
    }
    let class = match c.general_category_group() {
        GeneralCategoryGroup::Letter => Class::Letter,
        GeneralCategoryGroup::Number => Class::Number,
        GeneralCategoryGroup::Mark => Class::Mark,
        GeneralCategoryGroup::Punctuation => Class::Punctuation,
        GeneralCategoryGroup::Symbol => Class::Symbol,
        GeneralCategoryGroup::Separator => Class::Separator,
        GeneralCategoryGroup::Other => {
            if c.general_category() == GeneralCategory::Unassigned {
                Class::Unassigned
            } else {
                Class::Control
            }
        }
    };
    CharInfo {
        class,
        space: c.is_whitespace(),
    }
}

/// General categories of the ASCII range (UnicodeData.txt).
fn ascii_class(b: u8) -> Class {
    match b {
        0x00..=0x1f | 0x7f => Class::Control,
        b' ' => Class::Separator,
        b'0'..=b'9' => Class::Number,
        b'A'..=b'Z' | b'a'..=b'z' => Class::Letter,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => Class::Symbol,
        _ => Class::Punctuation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_table_agrees_with_the_unicode_tables() {
        for b in 0u8..128 {
            let c = b as char;
            let slow = match c.general_category_group() {
                GeneralCategoryGroup::Letter => Class::Letter,
                GeneralCategoryGroup::Number => Class::Number,
                GeneralCategoryGroup::Mark => Class::Mark,
                GeneralCategoryGroup::Punctuation => Class::Punctuation,
                GeneralCategoryGroup::Symbol => Class::Symbol,
                GeneralCategoryGroup::Separator => Class::Separator,
                GeneralCategoryGroup::Other => Class::Control,
            };
            assert_eq!(ascii_class(b), slow, "byte {b:#04x}");
            assert_eq!(classify(c).space, c.is_whitespace(), "byte {b:#04x}");
        }
    }

    #[test]
    fn unicode_15_1_categories() {
        // U+2EBF0 (CJK Extension I) is new in 15.1; U+1C89 only in 16.0.
        assert_eq!(classify('\u{2ebf0}').class, Class::Letter);
        assert_eq!(classify('\u{1c89}').class, Class::Unassigned);
        assert_eq!(classify('\u{0301}').class, Class::Mark);
        assert_eq!(classify('٣').class, Class::Number);
        assert_eq!(classify('«').class, Class::Punctuation);
        assert!(classify('\u{3000}').space);
        assert!(classify('\u{85}').space);
        assert!(!classify('\u{200b}').space);
    }
}
