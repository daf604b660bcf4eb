//! `POST /v1/completions` (the legacy text-completion endpoint).

use crate::{SamplingFields, StreamOptions, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `prompt`: a string, token ids, or a one-element list of either.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptSpec,
    pub max_tokens: Option<u64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub n: Option<u64>,
    pub best_of: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Number of most likely alternatives to list per token (0..=20).
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    /// `null` on stream chunks before the last.
    pub finish_reason: Option<String>,
}

/// A whole response, and also each stream chunk (same object type, as in
/// OpenAI's API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    /// Always on whole responses; on stream chunks only the last one has it,
    /// and only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_forms() {
        let p = |s: &str| serde_json::from_str::<PromptSpec>(s).expect("prompt");
        assert_eq!(p(r#""hi""#), PromptSpec::Text("hi".into()));
        assert_eq!(p("[1,2]"), PromptSpec::Tokens(vec![1, 2]));
        assert_eq!(p(r#"["a"]"#), PromptSpec::Texts(vec!["a".into()]));
        assert_eq!(p("[[3]]"), PromptSpec::TokenLists(vec![vec![3]]));
    }
}
