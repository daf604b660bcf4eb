//! A persona as chat turns: the fixed block every conversation with it
//! starts with.
//!
//! Layout, chosen for small models and strict templates: one system message
//! (who, how they talk, moods, scenario, the identity rule), then the example
//! exchanges as real user/assistant turns (a 135M model imitates turns far
//! better than a description of them), then an opening user line answered by
//! the greeting. Roles alternate user/assistant after the system message, as
//! templates such as Gemma's require.

use crate::{expand, Persona};
use serde::{Deserialize, Serialize};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One rendered chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

impl Turn {
    fn new(role: Role, content: String) -> Self {
        Turn { role, content }
    }
}

/// The user line the greeting answers, so that turns alternate.
pub const OPENER: &str = "Hello!";

impl Persona {
    /// The system message, macros expanded for `user`.
    pub fn system_text(&self, user: &str) -> String {
        let n = &self.name;
        let mut s = String::new();
        if !self.system_prompt.trim().is_empty() {
            s.push_str(self.system_prompt.trim());
            s.push('\n');
        }
        s.push_str(&format!("You are {n}, a character in the Troupe."));
        push(&mut s, " ", &self.personality);
        let st = &self.style;
        let voice: Vec<&str> = [&st.vocabulary, &st.rhythm, &st.tics, &st.punctuation]
            .into_iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        if !voice.is_empty() {
            s.push_str(&format!("\nHow {n} talks: {}", voice.join(" ")));
        }
        if !self.moods.is_empty() {
            let moods: Vec<String> = self
                .moods
                .iter()
                .map(|(m, how)| format!("{m}: {}", how.trim()))
                .collect();
            s.push_str(&format!("\nMoods: {}", moods.join("; ")));
        }
        push(&mut s, "\nScenario: ", &self.scenario);
        push(&mut s, "\nRule: ", &self.rule);
        s.push_str(&format!("\nAlways answer as {n}, in {n}'s own voice."));
        expand(&s, n, user)
    }

    /// The persona block: system message, example exchanges, opener and
    /// greeting, with `{{char}}` / `{{user}}` expanded.
    pub fn block(&self, user: &str) -> Vec<Turn> {
        self.block_before(user, &[], false)
    }

    /// The block a conversation starts with: `extra_system` texts (a
    /// client's own system messages) are appended to the system message;
    /// when the conversation's first turn is the assistant's (a greeting the
    /// client shows), the block ends with the opener instead of the
    /// greeting, so that roles still alternate.
    pub fn block_before(
        &self,
        user: &str,
        extra_system: &[&str],
        first_is_assistant: bool,
    ) -> Vec<Turn> {
        let x = |t: &str| expand(t.trim(), &self.name, user);
        let mut system = self.system_text(user);
        for e in extra_system {
            system.push('\n');
            system.push_str(e);
        }
        let mut turns = vec![Turn::new(Role::System, system)];
        for e in &self.examples {
            turns.push(Turn::new(Role::User, x(&e.user)));
            turns.push(Turn::new(Role::Assistant, x(&e.char)));
        }
        let greeting = !self.greeting.trim().is_empty();
        if first_is_assistant || greeting {
            turns.push(Turn::new(Role::User, OPENER.into()));
        }
        if greeting && !first_is_assistant {
            turns.push(Turn::new(Role::Assistant, x(&self.greeting)));
        }
        turns
    }

    /// The greeting shown to `user` (index 0 is the main one, then the
    /// alternates), macros expanded.
    pub fn greeting_for(&self, user: &str, index: usize) -> Option<String> {
        let g = if index == 0 {
            Some(&self.greeting)
        } else {
            self.alternate_greetings.get(index - 1)
        };
        g.filter(|g| !g.trim().is_empty())
            .map(|g| expand(g.trim(), &self.name, user))
    }
}

fn push(s: &mut String, sep: &str, text: &str) {
    let t = text.trim();
    if !t.is_empty() {
        s.push_str(sep);
        s.push_str(t);
    }
}
