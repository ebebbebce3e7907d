//! The OpenAI request bodies bodega accepts, and their translation into an engine request. Unknown
//! fields are ignored (clients send extras); wrong types and out-of-range values are 400s.

use super::error::ApiError;
use crate::engine::{Request, SamplingParams, StopConditions};
use crate::tokenizer::{Message, Tokenizer};
use serde::Deserialize;

/// `content` as a string or as a list of text parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": "..."}]`.
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// Only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: String,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: Content,
}

/// `stop`: a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `logprobs` of the completions API is a number; of the chat API a boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Logprobs {
    /// Chat: on or off (with `top_logprobs`).
    Flag(bool),
    /// Completions: how many alternatives.
    Count(u32),
}

/// The fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    /// The model's id (optional; when given it must be the served model).
    pub model: Option<String>,
    /// Token limit of the reply.
    pub max_tokens: Option<u64>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// 0..=2.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// 0 or -1: off.
    pub top_k: Option<i64>,
    /// [0, 1].
    pub min_p: Option<f32>,
    /// -2..=2.
    pub presence_penalty: Option<f32>,
    /// -2..=2.
    pub frequency_penalty: Option<f32>,
    /// > 0.
    pub repetition_penalty: Option<f32>,
    /// Reproducible sampling.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Log-probabilities.
    pub logprobs: Option<Logprobs>,
    /// Alternatives per position (chat).
    pub top_logprobs: Option<u32>,
    /// Keep going past end of sequence (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Number of choices: only 1.
    pub n: Option<u32>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Extra chat template variables (`{"enable_thinking": false}`), over the server's defaults.
    #[serde(default)]
    pub chat_template_kwargs: crate::tokenizer::TemplateKwargs,
    /// Everything else.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The prompt text.
    pub prompt: PromptText,
    /// Everything else.
    #[serde(flatten)]
    pub common: Common,
}

/// A prompt: a string, or a list holding exactly one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptText {
    /// One prompt.
    One(String),
    /// `["..."]`.
    Many(Vec<String>),
}

impl ChatRequest {
    /// The conversation as template messages.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        self.messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "developer" => "system",
                    r @ ("system" | "user" | "assistant") => r,
                    other => {
                        return Err(ApiError::invalid("messages", format!("unknown role '{other}'")));
                    }
                };
                let content = match &m.content {
                    Content::Text(t) => t.clone(),
                    Content::Parts(parts) => {
                        if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("content parts of type '{}' are not supported", p.kind),
                            ));
                        }
                        parts.iter().map(|p| p.text.as_str()).collect()
                    }
                };
                Ok(Message::new(role, content))
            })
            .collect()
    }
}

impl CompletionRequest {
    /// The one prompt.
    pub fn prompt(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            PromptText::One(p) => Ok(p),
            PromptText::Many(v) if v.len() == 1 => Ok(&v[0]),
            PromptText::Many(_) => Err(ApiError::invalid("prompt", "exactly one prompt per request is supported")),
        }
    }
}

impl Common {
    /// Checks every value and builds the engine request for `prompt_ids`; fields left out take the
    /// model's `defaults`.
    pub fn to_request(&self, prompt_ids: Vec<u32>, chat: bool, defaults: &SamplingParams) -> Result<Request, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        let range = |name: &str, v: Option<f32>, lo: f32, hi: f32| match v {
            Some(x) if !(lo..=hi).contains(&x) => {
                Err(ApiError::invalid(name, format!("{name} must be between {lo} and {hi}, not {x}")))
            }
            _ => Ok(()),
        };
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, f32::MIN_POSITIVE, 1.0)?;
        range("min_p", self.min_p, 0.0, 1.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("repetition_penalty", self.repetition_penalty, f32::MIN_POSITIVE, 10.0)?;
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return Err(ApiError::invalid("top_k", format!("top_k must be -1, 0 or positive, not {k}"))),
        };
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) => return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1")),
            other => other.map(|n| n.min(usize::MAX as u64) as usize),
        };
        let logprobs = match (&self.logprobs, self.top_logprobs) {
            (_, Some(n)) if n > 20 => return Err(ApiError::invalid("top_logprobs", "top_logprobs must be at most 20")),
            (Some(Logprobs::Flag(true)), n) if chat => Some(n.unwrap_or(0) as usize),
            (Some(Logprobs::Count(n)), _) if !chat && *n <= 5 => Some(*n as usize),
            (Some(Logprobs::Count(_)), _) if !chat => {
                return Err(ApiError::invalid("logprobs", "logprobs must be at most 5"))
            }
            (Some(Logprobs::Flag(false)) | None, _) => None,
            _ => return Err(ApiError::invalid("logprobs", "logprobs has the wrong type for this endpoint")),
        };
        let stop_strings = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) if v.len() <= 16 => v.clone(),
            Some(Stop::Many(_)) => return Err(ApiError::invalid("stop", "at most 16 stop strings")),
        };
        Ok(Request {
            prompt_ids,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(defaults.temperature),
                top_k: if self.top_k.is_some() { top_k } else { defaults.top_k },
                top_p: self.top_p.unwrap_or(defaults.top_p),
                min_p: self.min_p.unwrap_or(defaults.min_p),
                repeat_penalty: self.repetition_penalty.unwrap_or(defaults.repeat_penalty),
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
                logprobs,
                seed: self.seed.unwrap_or_else(rand::random),
                ..defaults.clone()
            },
            stop: StopConditions { max_tokens, stop_strings, ignore_eos: self.ignore_eos },
        })
    }
}

/// Token text for logprobs (the token's own piece of text).
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_left_out_take_the_models_defaults_and_given_ones_override_them() {
        let model = SamplingParams {
            temperature: 0.6,
            top_k: 20,
            top_p: 0.9,
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        };
        let omitted: Common = serde_json::from_value(serde_json::json!({"seed": 1})).unwrap();
        let request = omitted.to_request(vec![1], true, &model).unwrap();
        assert_eq!(request.sampling, SamplingParams { seed: 1, ..model.clone() });
        let given: Common = serde_json::from_value(serde_json::json!({
            "seed": 1, "temperature": 0.0, "top_k": -1, "top_p": 1.0, "repetition_penalty": 1.0
        }))
        .unwrap();
        let request = given.to_request(vec![1], true, &model).unwrap();
        let expected =
            SamplingParams { seed: 1, temperature: 0.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, ..model.clone() };
        assert_eq!(request.sampling, expected);
    }
}
