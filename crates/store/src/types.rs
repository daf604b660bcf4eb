//! The rows the store hands out, and the small enums stored as text.
//!
//! Roles and statuses are stored as lowercase words (checked by the schema)
//! so the file stays readable with the `sqlite3` shell.

use crate::StoreError;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use std::fmt;
use std::str::FromStr;

/// A conversation, without its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Public id: `conv_` followed by 32 lowercase hex digits.
    pub id: String,
    /// Opaque owner key; `""` when the server has no API keys.
    pub owner: String,
    pub persona_id: String,
    pub title: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last change that orders the list: creation
    /// or a new message (renames and streaming progress do not count).
    pub updated_at: i64,
}

impl Conversation {
    /// The cursor that continues a listing after this conversation.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            updated_at: self.updated_at,
            id: self.id.clone(),
        }
    }
}

/// A position in a newest-first listing: `(updated_at, id)` of the last
/// conversation seen. Keyset pagination, so pages stay stable while rows
/// are added; text form `<updated_at>_<id>` for query strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub updated_at: i64,
    pub id: String,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.updated_at, self.id)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Cursor, StoreError> {
        let bad = || StoreError::BadCursor(s.to_string());
        let (time, id) = s.split_once('_').ok_or_else(bad)?;
        let updated_at = time.parse().map_err(|_| bad())?;
        if id.is_empty() {
            return Err(bad());
        }
        Ok(Cursor {
            updated_at,
            id: id.to_string(),
        })
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Store-wide id, used by [`crate::Store::update_message`].
    pub id: i64,
    pub conversation_id: String,
    /// 1, 2, 3, … within the conversation, in insertion order.
    pub seq: i64,
    pub role: Role,
    pub content: String,
    pub status: Status,
    /// Why the message ended in [`Status::Error`].
    pub error: Option<String>,
    pub usage: Option<Usage>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Token counts of a finished reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// The new state of a streaming message. The constructors cover the
/// transitions the server makes; the fields are public for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageUpdate<'a> {
    /// The whole text so far (not a delta), so a crash keeps a clean prefix.
    pub content: &'a str,
    pub status: Status,
    pub error: Option<&'a str>,
    pub usage: Option<Usage>,
}

impl<'a> MessageUpdate<'a> {
    /// Progress: more text, still streaming.
    pub fn streaming(content: &'a str) -> Self {
        Self::new(content, Status::Streaming)
    }

    /// The reply finished normally.
    pub fn done(content: &'a str) -> Self {
        Self::new(content, Status::Done)
    }

    /// The client went away or asked to stop; keeps the partial text.
    pub fn cancelled(content: &'a str) -> Self {
        Self::new(content, Status::Cancelled)
    }

    /// Generation failed; keeps the partial text and says why.
    pub fn failed(content: &'a str, error: &'a str) -> Self {
        MessageUpdate {
            error: Some(error),
            ..Self::new(content, Status::Error)
        }
    }

    /// Adds token counts (usually to the final update).
    pub fn with_usage(self, usage: Usage) -> Self {
        MessageUpdate {
            usage: Some(usage),
            ..self
        }
    }

    fn new(content: &'a str, status: Status) -> Self {
        MessageUpdate {
            content,
            status,
            error: None,
            usage: None,
        }
    }
}

/// Declares a text-backed enum with its SQL conversions.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value for a stored word.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    FromSqlError::Other(
                        format!("unknown {} {text:?}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

text_enum! {
    /// Who wrote a message.
    Role {
        System = "system",
        User = "user",
        Assistant = "assistant",
    }
}

text_enum! {
    /// Where a message is in its life. Only `Streaming` can change;
    /// the others are final.
    Status {
        /// Complete.
        Done = "done",
        /// Being generated; the content is a prefix of the reply.
        Streaming = "streaming",
        /// Stopped by the client; the content is what was sent.
        Cancelled = "cancelled",
        /// Generation failed; see `error`.
        Error = "error",
        /// The process died while streaming; set by `recover`.
        Interrupted = "interrupted",
    }
}

impl Status {
    /// Whether the message can no longer change.
    pub fn is_final(self) -> bool {
        self != Status::Streaming
    }
}
