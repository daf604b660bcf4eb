//! Tokenizers read from GGUF metadata, streaming UTF-8 decode and chat templates.

pub mod chat;
