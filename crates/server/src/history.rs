//! A stored conversation as a prompt: the persona block, then as many of
//! the most recent turns as fit the context with room for the reply.

use crate::errors::ApiError;
use crate::state::AppState;
use troupe_personas::Persona;
use troupe_store::{Message as Stored, Role, Status};
use troupe_tokenizer::chat::Message;

/// The prompt of the next reply.
#[derive(Debug)]
pub struct Built {
    pub prompt: Vec<u32>,
    /// Stored turns left out (the oldest) so the prompt fits.
    pub omitted: usize,
    /// Leading prompt tokens that are the persona block (to pin).
    pub pin_prefix: usize,
}

/// The turns worth replaying: user messages, and replies that have text
/// (finished, stopped or cut off by a crash; failed replies are dropped).
/// Consecutive turns of one role are joined, since strict templates want
/// roles to alternate.
pub fn turns(history: &[Stored], new_user: &str) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let kept = history.iter().filter(|m| match m.role {
        Role::User => true,
        Role::Assistant => {
            !m.content.trim().is_empty()
                && matches!(
                    m.status,
                    Status::Done | Status::Cancelled | Status::Interrupted
                )
        }
        Role::System => false,
    });
    let all = kept
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .chain(std::iter::once(("user", new_user)));
    for (role, content) in all {
        match out.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(content);
            }
            _ => out.push(Message::new(role, content)),
        }
    }
    out
}

/// Renders `turns[k..]` after the persona block and tokenizes it.
fn render(
    st: &AppState,
    persona: Option<&Persona>,
    turns: &[Message],
) -> Result<Vec<u32>, ApiError> {
    let msgs = match persona {
        Some(p) => crate::personas::with_block(p, turns.to_vec()),
        None => turns.to_vec(),
    };
    let text = st
        .template
        .render(&msgs, true)
        .map_err(|e| ApiError::invalid("content", format!("chat template error: {e}")))?;
    Ok(st.tok.encode_chat(&text))
}

/// The first turn to keep when `k` would be: without a persona block a
/// prompt must not open with the assistant (strict templates refuse it).
fn start_at(persona: Option<&Persona>, turns: &[Message], k: usize) -> usize {
    let last = turns.len().saturating_sub(1);
    let mut k = k.min(last);
    if persona.is_none() && turns[k].role == "assistant" && k < last {
        k += 1;
    }
    k
}

/// The prompt for `turns` (the last is the new user message, always
/// kept) leaving `reserve` positions for the reply: the oldest turns are
/// dropped until it fits. Fails with `context_length_exceeded` when even
/// the block and the new message leave no room.
pub fn build(
    st: &AppState,
    persona: Option<&Persona>,
    turns: &[Message],
    reserve: usize,
) -> Result<Built, ApiError> {
    let fits = |ids: &[u32]| ids.len() + reserve <= st.n_ctx;
    let first = start_at(persona, turns, 0);
    let mut best = (first, render(st, persona, &turns[first..])?);
    if !fits(&best.1) {
        // Binary search for the fewest dropped turns that fit; the prompt
        // shrinks as turns are dropped.
        let last = turns.len() - 1;
        let tail = render(st, persona, &turns[last..])?;
        if !fits(&tail) {
            return Err(too_long(st, tail.len(), reserve));
        }
        let (mut lo, mut hi) = (first, last);
        best = (last, tail);
        while lo + 1 < hi {
            let mid = start_at(persona, turns, lo + (hi - lo) / 2);
            if mid >= hi {
                break;
            }
            let ids = render(st, persona, &turns[mid..])?;
            if fits(&ids) {
                hi = mid;
                best = (mid, ids);
            } else {
                lo = mid;
            }
        }
    }
    let (k, prompt) = best;
    let pin_prefix = match persona {
        Some(p) => block_prefix(st, p, turns[k].role == "assistant", &prompt),
        None => 0,
    };
    Ok(Built {
        prompt,
        omitted: k,
        pin_prefix,
    })
}

/// How many leading tokens of `prompt` are the persona block alone.
fn block_prefix(st: &AppState, p: &Persona, first_is_assistant: bool, prompt: &[u32]) -> usize {
    let block: Vec<Message> = p
        .block_before("User", &[], first_is_assistant)
        .into_iter()
        .map(|t| Message::new(t.role.as_str(), t.content))
        .collect();
    match st.template.render(&block, false) {
        Ok(text) => {
            let ids = st.tok.encode_chat(&text);
            ids.iter().zip(prompt).take_while(|(a, b)| a == b).count()
        }
        Err(_) => 0,
    }
}

fn too_long(st: &AppState, prompt: usize, reserve: usize) -> ApiError {
    ApiError::invalid(
        "content",
        format!(
            "This model's maximum context length is {} tokens; the persona block and this \
             message take {prompt}, leaving less than the {reserve} needed for the reply. \
             Send a shorter message or a smaller max_tokens.",
            st.n_ctx
        ),
    )
    .code("context_length_exceeded")
}

/// The block for chat completions with a persona, for pinning: how many
/// leading tokens of `prompt` it covers.
pub fn chat_pin_prefix(st: &AppState, p: &Persona, msgs: &[Message], prompt: &[u32]) -> usize {
    let first_is_assistant = msgs
        .iter()
        .find(|m| m.role != "system")
        .is_some_and(|m| m.role == "assistant");
    if msgs.iter().any(|m| m.role == "system") {
        // A client's own system text changes the block: nothing shared.
        return 0;
    }
    block_prefix(st, p, first_is_assistant, prompt)
}
