//! Chat templates: renders a model's `tokenizer.chat_template` (a Jinja string
//! from GGUF metadata) the way Hugging Face `transformers` does in
//! `apply_chat_template`.
//!
//! HF renders with a Jinja2 `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])`, with the
//! globals `raise_exception(msg)` and `strftime_now(fmt)`, a `tojson` filter that
//! wraps `json.dumps(ensure_ascii=False, ...)`, and the variables `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token` (plus any extra keyword
//! arguments). We mirror that with `minijinja`:
//!
//! - `trim_blocks`/`lstrip_blocks` on, no auto-escaping, trailing newline of
//!   the source dropped (Jinja2's `keep_trailing_newline=False`), booleans and
//!   none printed as Python's `True`/`False`/`None`;
//! - `{% break %}`/`{% continue %}` (minijinja's `loop_controls` feature);
//! - Python string and dict methods (`.strip()`, `.startswith()`, `.split()`,
//!   `.items()`, `.get()`, ...) through `minijinja-contrib`'s pycompat callback;
//! - `tojson` replaced by a Python-`json.dumps`-compatible one ([`pyjson`]);
//! - `raise_exception` surfaces as [`ChatError::Raised`] with the template's text;
//! - `strftime_now` formats the current time in UTC ([`strftime`]); a fixed
//!   time can be set for reproducible renders;
//! - HF's `{% generation %}...{% endgeneration %}` tags (assistant-mask
//!   markers, no effect on the text) are rewritten to a plain block.
//!
//! Models without a template fall back to ChatML ([`ChatTemplate::chatml`]).

mod pyjson;
pub mod strftime;

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error as JinjaError, ErrorKind, Output, State};
use serde::{Deserialize, Serialize};

/// Name under which the template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The ChatML template used when a model has none: `<|im_start|>{role}\n{content}<|im_end|>\n`
/// per message, then `<|im_start|>assistant\n` when a generation prompt is asked for.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// One chat turn, as HF templates see it: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ... (templates decide what they accept).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a chat template could not be built or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template source is not valid Jinja (as minijinja parses it).
    #[error("chat template does not compile: {detail}")]
    Syntax { detail: String },
    /// The template called `raise_exception(message)`.
    #[error("chat template raised an exception: {message}")]
    Raised { message: String },
    /// Rendering failed for another reason (unknown filter, bad operand, ...).
    #[error("chat template failed to render: {detail}")]
    Render { detail: String },
    /// The extra context given to [`ChatTemplate::render_with`] is not a map.
    #[error("extra chat template context must serialize to a map, got {kind}")]
    ExtraNotMap { kind: String },
}

/// Where `strftime_now` takes its time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    System,
    Fixed(i64),
}

impl Clock {
    fn now(self) -> i64 {
        match self {
            Clock::Fixed(secs) => secs,
            Clock::System => match SystemTime::now().duration_since(UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            },
        }
    }
}

/// Error payload attached to the minijinja error raised by `raise_exception`,
/// so that [`ChatTemplate::render`] can tell it apart from other failures.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A compiled chat template plus the special tokens it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template) with HF semantics; `bos` and
    /// `eos` are the texts of the model's BOS/EOS tokens (`bos_token`, `eos_token`).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(python_formatter);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        set_clock(&mut env, Clock::System);
        let rewritten = rewrite_generation_tags(source);
        env.add_template_owned(TEMPLATE_NAME, rewritten.into_owned())
            .map_err(|e| ChatError::Syntax {
                detail: describe(&e),
            })?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// The documented fallback for a model without a template: ChatML
    /// ([`CHATML_TEMPLATE`]), with no BOS text and `<|im_end|>` as EOS.
    pub fn chatml() -> Self {
        // The built-in source is a constant and compiles (covered by tests).
        #[allow(clippy::expect_used)]
        Self::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("built-in ChatML template compiles")
    }

    /// Builds from a GGUF `tokenizer.chat_template` value, or ChatML
    /// ([`CHATML_TEMPLATE`], with these `bos`/`eos`) when the model has none
    /// (or an empty one).
    pub fn from_metadata(source: Option<&str>, bos: &str, eos: &str) -> Result<Self, ChatError> {
        match source {
            Some(s) if !s.trim().is_empty() => Self::new(s, bos, eos),
            _ => Self::new(CHATML_TEMPLATE, bos, eos),
        }
    }

    /// Makes `strftime_now` report the given Unix time (seconds, UTC) instead
    /// of the system clock, for reproducible renders and tests.
    pub fn with_fixed_time(mut self, unix_secs: i64) -> Self {
        set_clock(&mut self.env, Clock::Fixed(unix_secs));
        self
    }

    /// The template source as given to [`ChatTemplate::new`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` text templates see.
    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    /// The `eos_token` text templates see.
    pub fn eos_token(&self) -> &str {
        &self.eos
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the
    /// opening of an assistant turn (as the template defines it).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_value(messages, add_generation_prompt, None)
    }

    /// Like [`ChatTemplate::render`], with extra template variables (HF's
    /// `**kwargs` of `apply_chat_template`: `tools`, `enable_thinking`, ...).
    /// `extra` must serialize to a map; the standard variables win on a clash.
    pub fn render_with<S: Serialize>(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &S,
    ) -> Result<String, ChatError> {
        let extra = Value::from_serialize(extra);
        if extra.kind() != ValueKind::Map {
            return Err(ChatError::ExtraNotMap {
                kind: extra.kind().to_string(),
            });
        }
        self.render_value(messages, add_generation_prompt, Some(extra))
    }

    fn render_value(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: Option<Value>,
    ) -> Result<String, ChatError> {
        let base = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        };
        let ctx = match extra {
            // In merge_maps the later source wins a clash.
            Some(extra) => minijinja::value::merge_maps([extra, base]),
            None => base,
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Render {
                detail: describe(&e),
            })?;
        template.render(ctx).map_err(|e| classify(&e))
    }
}

/// Registers `strftime_now` reading from `clock`.
fn set_clock(env: &mut Environment<'static>, clock: Clock) {
    env.add_function("strftime_now", move |fmt: &str| -> String {
        strftime::format(fmt, clock.now())
    });
}

/// Prints values as Python does in `{{ ... }}`: `True`/`False`/`None` where
/// minijinja would print `true`/`false`/`none`.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), JinjaError> {
    let text = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text)
        .map_err(|_| JinjaError::from(ErrorKind::WriteFailure))
}

/// HF's `raise_exception(message)`: aborts rendering with the template's text.
fn raise_exception(message: &str) -> Result<Value, JinjaError> {
    Err(
        JinjaError::new(ErrorKind::InvalidOperation, message.to_owned())
            .with_source(RaisedException(message.to_owned())),
    )
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`:
/// positional arguments in that order, keyword arguments by name.
fn tojson_filter(value: &Value, args: &[Value], kwargs: Kwargs) -> Result<Value, JinjaError> {
    if args.len() > 4 {
        return Err(JinjaError::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 positional arguments",
        ));
    }
    let pick = |idx: usize, name: &str| -> Result<Option<Value>, JinjaError> {
        let kw: Option<Value> = kwargs.get(name)?;
        Ok(kw.or_else(|| args.get(idx).cloned()))
    };
    let ensure_ascii = pick(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    JinjaError::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson indent must be an integer or a string, got {v}"),
                    )
                })?;
                Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
            }
        },
    };
    let separators = match pick(2, "separators")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .unwrap_or_default();
            match <[String; 2]>::try_from(parts) {
                Ok([item, key]) => Some((item, key)),
                Err(_) => {
                    return Err(JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson separators must be a pair of strings",
                    ))
                }
            }
        }
    };
    let sort_keys = pick(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let opts = pyjson::Options {
        ensure_ascii,
        indent,
        separators,
        sort_keys,
    };
    let text = pyjson::dumps(value, &opts).map_err(|e| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("tojson could not serialize value: {e}"),
        )
    })?;
    Ok(Value::from_safe_string(text))
}

/// Maps a render error to [`ChatError`], recognising `raise_exception`.
fn classify(err: &JinjaError) -> ChatError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return ChatError::Raised {
                message: raised.0.clone(),
            };
        }
        source = e.source();
    }
    ChatError::Render {
        detail: describe(err),
    }
}

/// One-line description of a minijinja error, with its line when known.
fn describe(err: &JinjaError) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Rewrites HF's `{% generation %}` / `{% endgeneration %}` (markers used to
/// build assistant-token masks; they render their body unchanged) into
/// `{% if true %}` / `{% endif %}`, keeping any `-`/`+` whitespace control.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        match parse_generation_tag(tag) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &tag[consumed..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// If `tag` (starting with `{%`) is a `generation`/`endgeneration` tag, the
/// replacement text and the number of bytes it spans.
fn parse_generation_tag(tag: &str) -> Option<(String, usize)> {
    let inner_start = 2;
    let end = tag.find("%}")?;
    let inner = &tag[inner_start..end];
    let (open_ctl, body) = match inner.chars().next() {
        Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
        _ => (String::new(), inner),
    };
    let (body, close_ctl) = match body.trim_end().chars().last() {
        Some(c @ ('-' | '+')) => {
            let trimmed = body.trim_end();
            (&trimmed[..trimmed.len() - 1], c.to_string())
        }
        _ => (body, String::new()),
    };
    let keyword = match body.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    Some((format!("{{%{open_ctl} {keyword} {close_ctl}%}}"), end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_are_rewritten_with_whitespace_control() {
        let src = "a{%- generation %}b{% endgeneration -%} c{% if x %}{% endif %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "a{%- if true %}b{% endif -%} c{% if x %}{% endif %}"
        );
        assert!(matches!(
            rewrite_generation_tags("{{ x }}"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn chatml_builds() {
        let t = ChatTemplate::chatml();
        let out = t.render(&[Message::new("user", "hi")], true);
        assert_eq!(
            out.ok().as_deref(),
            Some("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        );
    }
}
