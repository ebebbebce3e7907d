//! What a front end hands the engine and what it gets back: the request with its sampling and stop
//! settings, and the events of its reply.

use serde::Serialize;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to p (1.0: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one's probability (0: off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1.0: off).
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token already generated (OpenAI's presence penalty).
    pub presence_penalty: f32,
    /// Subtracted once per earlier occurrence in the reply (OpenAI's frequency penalty).
    pub frequency_penalty: f32,
    /// Report the chosen token's log-probability and this many alternatives (`None`: off).
    pub logprobs: Option<usize>,
    /// Seed of this request's random stream: the same seed gives the same reply.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults (conventions.md): temperature 0.8, top-k 40, top-p 0.95.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            seed: 0,
        }
    }
}

/// When a reply ends (besides cancellation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopConditions {
    /// At most this many generated tokens (`None`: until a stop or the context end).
    pub max_tokens: Option<usize>,
    /// Text that ends the reply; the reply excludes it.
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks need fixed lengths).
    pub ignore_eos: bool,
}

/// One generation job.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The prompt, already tokenized (chat template applied by the front end).
    pub prompt_ids: Vec<u32>,
    /// Token choice.
    pub sampling: SamplingParams,
    /// End conditions.
    pub stop: StopConditions,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context end.
    Length,
    /// The request was cancelled.
    Cancelled,
}

/// Token counts of a finished request (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

/// Latency and speed of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Submission to first generated token, in milliseconds.
    pub ttft_ms: f64,
    /// Prompt tokens processed per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Submission to the end, in milliseconds.
    pub total_ms: f64,
}

/// The end of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Every generated token id, the stopping one included.
    pub generated_ids: Vec<u32>,
    /// Token counts.
    pub usage: Usage,
    /// Speed.
    pub timings: Timings,
    /// Speculative guesses proposed and accepted for this request (`None`: speculation is off).
    pub speculative: Option<super::speculative::SpecCounts>,
}

/// Log-probabilities of the model's distribution (before penalties and temperature) at one position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprobs {
    /// The chosen token's log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// What the engine sends back for a request, in order: tokens, then `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (may be empty while a UTF-8 character or a
    /// possible stop string is incomplete).
    Token {
        /// The token id.
        id: u32,
        /// New reply text.
        text: String,
        /// Log-probabilities, when the request asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    /// The reply ended.
    Done(Completion),
    /// The request failed; nothing follows.
    Error(String),
}
