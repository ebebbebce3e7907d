//! A conversation: the system message and the turns so far, saved and loaded as OpenAI `messages`
//! JSON, and fitted into the model's context (an error, or dropping the oldest turns).

use crate::tokenizer::{Message, Tokenizer};
use anyhow::{bail, Context};
use std::path::Path;

/// The conversation every turn sends whole (the prefix cache makes that cheap).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Conversation {
    pub system: Option<String>,
    /// User and assistant messages, oldest first.
    pub turns: Vec<Message>,
}

/// What to do when the conversation outgrows the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Overflow {
    /// Say so and leave the conversation as it was (offer /clear).
    Error,
    /// Drop the oldest turns until it fits.
    Truncate,
}

impl Conversation {
    /// Every message, the system message first.
    pub fn messages(&self) -> Vec<Message> {
        let system = self.system.iter().map(|s| Message::new("system", s.as_str()));
        system.chain(self.turns.iter().cloned()).collect()
    }

    /// Builds a conversation from OpenAI-style messages: one optional leading system message, then
    /// user and assistant messages.
    pub fn from_messages(messages: Vec<Message>) -> anyhow::Result<Self> {
        let mut conversation = Conversation::default();
        for (i, m) in messages.into_iter().enumerate() {
            match m.role.as_str() {
                "system" if i == 0 => conversation.system = Some(m.content),
                "system" => bail!("message {}: a system message may only come first", i + 1),
                "user" | "assistant" => conversation.turns.push(m),
                other => bail!("message {}: unknown role '{other}' (use system, user or assistant)", i + 1),
            }
        }
        Ok(conversation)
    }

    /// Writes the conversation as a JSON array of `{"role", "content"}`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.messages())?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a conversation written by [`Conversation::save`] (or any OpenAI `messages` array).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let messages: Vec<Message> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array of {{\"role\", \"content\"}}", path.display()))?;
        Self::from_messages(messages)
    }

    /// The prompt ids of the conversation, leaving `room` tokens for the reply in `context`. With
    /// `Overflow::Truncate` the oldest turns are dropped (returned count) until it fits; otherwise,
    /// or when even the last message alone is too long, an error says so.
    pub fn fit(
        &mut self,
        tokenizer: &Tokenizer,
        context: usize,
        room: usize,
        overflow: Overflow,
    ) -> anyhow::Result<(Vec<u32>, usize)> {
        let mut dropped = 0;
        loop {
            let (_, ids) = tokenizer.encode_chat(&self.messages())?;
            if ids.len() + room <= context {
                return Ok((ids, dropped));
            }
            if overflow == Overflow::Error || self.turns.len() <= 1 {
                bail!(
                    "the conversation ({} tokens, plus {room} for the reply) no longer fits the context of {context} \
                     tokens; /clear starts a new one (or run with --context-overflow truncate)",
                    ids.len()
                );
            }
            // Drop the oldest exchange: a user message and the reply that followed it.
            let n = if self.turns.len() > 2 && self.turns[1].role == "assistant" { 2 } else { 1 };
            self.turns.drain(..n);
            dropped += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked() {
        let ok = Conversation::from_messages(vec![Message::new("system", "s"), Message::new("user", "u")]).unwrap();
        assert_eq!(ok.system.as_deref(), Some("s"));
        assert_eq!(ok.messages().len(), 2);
        let late = Conversation::from_messages(vec![Message::new("user", "u"), Message::new("system", "s")]);
        assert!(late.unwrap_err().to_string().contains("only come first"));
        let odd = Conversation::from_messages(vec![Message::new("robot", "beep")]);
        assert!(odd.unwrap_err().to_string().contains("unknown role 'robot'"));
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let c = Conversation {
            system: Some("Be brief.".into()),
            turns: vec![Message::new("user", "Hi \"there\"\n"), Message::new("assistant", "Hello.")],
        };
        c.save(&path).unwrap();
        assert_eq!(Conversation::load(&path).unwrap(), c);
        std::fs::write(&path, "{\"not\": \"a list\"}").unwrap();
        assert!(Conversation::load(&path).is_err());
    }
}
