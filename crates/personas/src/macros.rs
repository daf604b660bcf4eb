//! Character Card macros: `{{char}}` and `{{user}}` (any case), and the
//! older `<BOT>` / `<CHAR>` / `<USER>` spellings some cards still use.

/// `text` with the character's and the user's names filled in.
pub fn expand(text: &str, char_name: &str, user_name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '<']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let name = [
            ("{{char}}", char_name),
            ("{{user}}", user_name),
            ("<bot>", char_name),
            ("<char>", char_name),
            ("<user>", user_name),
        ]
        .into_iter()
        .find(|(m, _)| {
            rest.get(..m.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(m))
        });
        match name {
            Some((m, v)) => {
                out.push_str(v);
                rest = &rest[m.len()..];
            }
            None => {
                out.push_str(&rest[..1]);
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_both_macros_in_any_case() {
        assert_eq!(
            expand(
                "Hi {{user}}, I am {{Char}}. <USER>! {{CHAR}}",
                "Quill",
                "Ann"
            ),
            "Hi Ann, I am Quill. Ann! Quill"
        );
        assert_eq!(expand("{{char", "Q", "A"), "{{char");
        assert_eq!(expand("a < b {{x}} ü{", "Q", "A"), "a < b {{x}} ü{");
    }
}
