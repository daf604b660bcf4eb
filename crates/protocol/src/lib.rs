//! The OpenAI-compatible wire format: what clients send and receive.
//!
//! Requests accept the fields Troupe acts on and ignore others that clients
//! commonly send (`user`, `metadata`, …), as most OpenAI-compatible servers
//! do; fields Troupe cannot honour (`n > 1`, `suffix`, `echo`, tools) are
//! refused by the server with a 400 naming the parameter.

mod chat;
mod completion;
mod error;

pub use chat::*;
pub use completion::*;
pub use error::*;

use serde::{Deserialize, Serialize};

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both completion endpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (llama.cpp, vLLM): keep the k most likely tokens.
    pub top_k: Option<i64>,
    /// Extension (llama.cpp, vLLM): minimum probability relative to the top.
    pub min_p: Option<f32>,
    /// Extension (vLLM): multiplicative repetition penalty.
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopSpec>,
    /// Extension (llama.cpp, vLLM): keep generating past end-of-turn tokens
    /// until `max_tokens` (for fixed-length benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
        }
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// `POST /tokenize`: text (`content` as llama.cpp, or `prompt` as vLLM), or
/// chat `messages` rendered with the model's template.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub content: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    /// Add BOS/EOS as the model's metadata asks (default true).
    pub add_special: Option<bool>,
    /// With `messages`: end with the assistant's turn opener (default true).
    pub add_generation_prompt: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    /// llama.cpp's name for the text.
    pub content: String,
    /// vLLM's name for the same text.
    pub prompt: String,
}
