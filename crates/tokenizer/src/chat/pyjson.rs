//! Python `json.dumps` output for minijinja values, as HF's `tojson` filter
//! produces it (`json.dumps(x, ensure_ascii=False, indent=None,
//! separators=None, sort_keys=False)` by default).
//!
//! Follows the Python `json` module documentation: separators default to
//! `(", ", ": ")` without indent and `(",", ": ")` with one; an integer indent
//! means that many spaces per level, a string indent is used as is; maps keep
//! insertion order unless `sort_keys`; `ensure_ascii` escapes every character
//! outside `' '..='~'` as `\uXXXX` (UTF-16, lowercase hex). Floats use Python's
//! `repr` (shortest round-trip digits, exponent form outside `1e-4 <= |x| < 1e16`).

use std::io;

use minijinja::value::{Value, ValueKind};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::ser::Formatter;

/// Options of Python's `json.dumps` that HF's `tojson` exposes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    pub ensure_ascii: bool,
    /// Text repeated once per nesting level; `None` is the one-line form.
    pub indent: Option<String>,
    /// `(item_separator, key_separator)`; `None` uses Python's defaults.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// Serializes `value` the way Python's `json.dumps` would with `opts`.
pub(crate) fn dumps(value: &Value, opts: &Options) -> Result<String, serde_json::Error> {
    let (item_sep, key_sep) = match (&opts.separators, &opts.indent) {
        (Some((item, key)), _) => (item.as_str(), key.as_str()),
        (None, None) => (", ", ": "),
        (None, Some(_)) => (",", ": "),
    };
    let formatter = PyFormatter {
        indent: opts.indent.as_deref().map(str::as_bytes),
        item_sep: item_sep.as_bytes(),
        key_sep: key_sep.as_bytes(),
        ensure_ascii: opts.ensure_ascii,
        level: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    PyValue {
        value,
        sort_keys: opts.sort_keys,
    }
    .serialize(&mut ser)?;
    String::from_utf8(out).map_err(serde_json::Error::custom)
}

/// A value serialized with Python key ordering (insertion, or sorted).
struct PyValue<'a> {
    value: &'a Value,
    sort_keys: bool,
}

impl Serialize for PyValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value.kind() {
            ValueKind::Map => {
                let mut keys: Vec<Value> =
                    self.value.try_iter().map_err(S::Error::custom)?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let mut map = serializer.serialize_map(Some(keys.len()))?;
                for key in &keys {
                    let item = self.value.get_item(key).map_err(S::Error::custom)?;
                    map.serialize_entry(
                        key,
                        &PyValue {
                            value: &item,
                            sort_keys: self.sort_keys,
                        },
                    )?;
                }
                map.end()
            }
            ValueKind::Seq => {
                let items: Vec<Value> = self.value.try_iter().map_err(S::Error::custom)?.collect();
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in &items {
                    seq.serialize_element(&PyValue {
                        value: item,
                        sort_keys: self.sort_keys,
                    })?;
                }
                seq.end()
            }
            _ => self.value.serialize(serializer),
        }
    }
}

/// `serde_json` formatter reproducing Python's separators, indent and escaping.
struct PyFormatter<'a> {
    indent: Option<&'a [u8]>,
    item_sep: &'a [u8],
    key_sep: &'a [u8],
    ensure_ascii: bool,
    /// Current nesting depth.
    level: usize,
    /// Whether the innermost open container has received a value.
    has_value: bool,
}

impl PyFormatter<'_> {
    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(indent) = self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(indent)?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level = self.level.saturating_sub(1);
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(self.item_sep)?;
        }
        self.newline(w)
    }
}

impl Formatter for PyFormatter<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(self.key_sep)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, f64::from(value))
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if !self.ensure_ascii {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                let mut buf = [0u8; 4];
                w.write_all(c.encode_utf8(&mut buf).as_bytes())?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Python's `repr(float)` for a finite value: shortest round-trip digits,
/// positional between 1e-4 and 1e16, else `d.ddde±XX`.
fn python_float_repr(value: f64) -> String {
    if !value.is_finite() {
        // serde_json writes non-finite floats as null before reaching here;
        // kept for completeness with Python's spelling.
        return if value.is_nan() {
            "NaN".to_owned()
        } else if value > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        };
    }
    let sci = format!("{:e}", value.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if value.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (v, want) in cases {
            assert_eq!(python_float_repr(v), want, "{v}");
        }
    }

    #[test]
    fn separators_and_indent() {
        let v = Value::from_serialize(serde_json::json!({"a": "é", "b": [1, {}]}));
        let compact = dumps(&v, &Options::default()).ok();
        assert_eq!(compact.as_deref(), Some(r#"{"a": "é", "b": [1, {}]}"#));
        let opts = Options {
            indent: Some("  ".into()),
            ensure_ascii: true,
            ..Options::default()
        };
        let pretty = dumps(&v, &opts).ok();
        assert_eq!(
            pretty.as_deref(),
            Some("{\n  \"a\": \"\\u00e9\",\n  \"b\": [\n    1,\n    {}\n  ]\n}")
        );
    }
}
