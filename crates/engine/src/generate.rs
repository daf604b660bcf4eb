//! Text generation on top of the engine: prompt → sampled tokens → streamed
//! UTF-8 text, stopping at end-of-generation tokens, stop strings or the
//! token limit.

use crate::sampler::{Sampler, SamplingParams, SamplingParamsError};
use crate::{Engine, EngineError, SeqId, Step};
use std::time::{Duration, Instant};
use troupe_tokenizer::Tokenizer;

/// Why generation ended (the OpenAI `finish_reason` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// The token limit or the context limit.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not emitted.
    pub stop: Vec<String>,
    /// Stop at the model's end-of-generation tokens (EOS, EOT, …).
    pub stop_at_eog: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_at_eog: true,
        }
    }
}

/// The outcome of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// Prompt tokens actually evaluated (after any reused prefix).
    pub prompt_evaluated: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Sampling(#[from] SamplingParamsError),
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// Whether the caller wants more text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Generates into sequence `seq`, whose cache already holds `cached` tokens
/// of `prompt` (a reused prefix; pass 0 for a fresh sequence). `on_text`
/// receives each piece of text as soon as it is certain (never a partial
/// UTF-8 character nor a possible start of a stop string).
pub fn generate(
    engine: &mut Engine,
    tok: &Tokenizer,
    seq: SeqId,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str) -> Flow,
) -> Result<Generation, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut sampler = Sampler::new(params.sampling)?;
    let cached = engine.seq_len(seq)?.min(prompt.len() - 1);
    engine.truncate(seq, cached)?;
    let t0 = Instant::now();
    let logits = engine.prefill(seq, &prompt[cached..])?;
    let mut history: Vec<u32> = prompt.to_vec();
    let mut next = sampler.sample(logits, &history);
    let prefill_time = t0.elapsed();
    let t1 = Instant::now();

    let mut out = Generation {
        text: String::new(),
        tokens: Vec::new(),
        finish: FinishReason::Length,
        prompt_evaluated: prompt.len() - cached,
        prefill_time,
        decode_time: Duration::ZERO,
    };
    let mut stream = tok.stream_decoder(false);
    let mut stops = StopMatcher::new(&params.stop);
    loop {
        if params.stop_at_eog && tok.is_eog(next) {
            out.finish = FinishReason::Stop;
            break;
        }
        out.tokens.push(next);
        history.push(next);
        let piece = stream.push(next);
        let (emit, hit) = stops.feed(&piece);
        if !emit.is_empty() {
            out.text.push_str(&emit);
            if on_text(&emit) == Flow::Stop {
                out.finish = FinishReason::Cancelled;
                break;
            }
        }
        if hit {
            out.finish = FinishReason::Stop;
            break;
        }
        if out.tokens.len() >= params.max_tokens || engine.seq_len(seq)? + 1 > engine.n_ctx() {
            out.finish = FinishReason::Length;
            break;
        }
        engine.step(&[Step {
            seq,
            tokens: &[next],
            logits: true,
            span: 0,
        }])?;
        let logits = engine
            .logits(0)
            .ok_or(EngineError::Batch(troupe_models::BatchError::Empty))?;
        next = sampler.sample(logits, &history);
    }
    if out.finish != FinishReason::Stop || !stops.hit {
        let rest = stops.flush(&stream.finish());
        if !rest.is_empty() && out.finish != FinishReason::Cancelled {
            out.text.push_str(&rest);
            let _ = on_text(&rest);
        }
    }
    out.decode_time = t1.elapsed();
    Ok(out)
}

/// Holds back text that may be the start of a stop string.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
    pub(crate) hit: bool,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            hit: false,
        }
    }

    /// Adds `piece`; returns the text that is now safe to emit and whether
    /// a stop string was found (text from it on is dropped).
    pub(crate) fn feed(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        let first_hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_hit {
            self.hit = true;
            let emit = self.held[..at].to_string();
            self.held.clear();
            return (emit, true);
        }
        // Keep the longest suffix that is a proper prefix of a stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        (emit, false)
    }

    /// Final text at the end of generation.
    pub(crate) fn flush(&mut self, tail: &str) -> String {
        let (mut emit, hit) = self.feed(tail);
        if !hit {
            emit.push_str(&std::mem::take(&mut self.held));
        }
        emit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (e, hit) = m.feed(p);
            out.push_str(&e);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush(""));
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces() {
        assert_eq!(
            run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]),
            ("Hello".into(), true)
        );
    }

    #[test]
    fn near_miss_is_released() {
        assert_eq!(run(&["END"], &["the EN", "D"]), ("the ".into(), true));
        assert_eq!(
            run(&["END"], &["the EN", "d of it"]),
            ("the ENd of it".into(), false)
        );
    }

    #[test]
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn unicode_stop_strings() {
        assert_eq!(run(&["🛑"], &["ok ", "🛑", "x"]), ("ok ".into(), true));
    }
}
