//! What a benchmark sends requests to: the engine in this process, or any OpenAI-compatible server.
//! Both answer a [`Prompt`] with a [`RequestRecord`]: chunk arrival times, the text, and the token
//! counts the target itself reports. Requests are greedy (or sampled at the workload's temperature,
//! with llama.cpp's top-k and top-p and a fixed seed) with EOS ignored, so every target does the same
//! amount of work.

use super::http::HttpTarget;
use super::metrics::RequestRecord;
use super::workload::Prompt;
use crate::engine::{Engine, Event, Request, SamplingParams, StopConditions};
use crate::error::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting request looks at the stop flag (Ctrl-C).
pub const STOP_POLL: Duration = Duration::from_millis(50);

/// The error of a request that Ctrl-C cut short.
pub const CANCELLED: &str = "cancelled";

/// A benchmark target.
pub enum Target {
    InProcess(Arc<Engine>),
    Http(HttpTarget),
    /// The in-process engine with speculative decoding switched on or off for this target's runs
    /// (`--spec-compare` runs one engine as both A and B).
    InProcessSpeculating {
        engine: Arc<Engine>,
        speculate: bool,
    },
}

impl Target {
    /// Sends one prompt and waits for the whole reply; `stop` set mid-way cancels it.
    pub async fn send(&self, prompt: &Prompt, stop: &Arc<AtomicBool>) -> RequestRecord {
        match self {
            Target::InProcess(engine) | Target::InProcessSpeculating { engine, .. } => {
                let (engine, owned, stop) = (engine.clone(), prompt.clone(), stop.clone());
                tokio::task::spawn_blocking(move || in_process(&engine, &owned, &stop))
                    .await
                    .unwrap_or_else(|e| failed(prompt.output_len, format!("request task failed: {e}")))
            }
            Target::Http(http) => http.send(prompt, stop).await,
        }
    }

    /// The engine, for step statistics, when the target runs in this process.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match self {
            Target::InProcess(engine) | Target::InProcessSpeculating { engine, .. } => Some(engine),
            Target::Http(_) => None,
        }
    }

    /// Readies the target for a run: an engine shared by two targets gets this one's speculation
    /// setting and a cold prefix cache, so that neither profits from the other's prefills.
    pub fn prepare(&self) -> Result<()> {
        if let Target::InProcessSpeculating { engine, speculate } = self {
            engine.set_speculation(*speculate)?;
            engine.clear_prefix_cache()?;
        }
        Ok(())
    }
}

/// A record for a request that failed before producing anything.
pub fn failed(requested_tokens: usize, error: String) -> RequestRecord {
    RequestRecord { requested_tokens, error: Some(error), ..Default::default() }
}

/// The request the engine gets for a prompt: at the prompt's temperature (0: greedy) with the
/// sampler's defaults otherwise (top-k 40, top-p 0.95, seed 0), EOS ignored, exactly `output_len`
/// tokens.
fn engine_request(prompt: &Prompt) -> Request {
    Request {
        prompt_ids: prompt.ids.clone(),
        sampling: SamplingParams { temperature: prompt.temperature, ..SamplingParams::default() },
        stop: StopConditions { max_tokens: Some(prompt.output_len), stop_strings: Vec::new(), ignore_eos: true },
    }
}

fn in_process(engine: &Engine, prompt: &Prompt, stop: &AtomicBool) -> RequestRecord {
    let started = Instant::now();
    let mut record = RequestRecord { requested_tokens: prompt.output_len, ..Default::default() };
    let handle = match engine.submit(engine_request(prompt)) {
        Ok(handle) => handle,
        Err(e) => return failed(prompt.output_len, e.to_string()),
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            handle.cancel();
        }
        let event = match handle.recv_timeout(STOP_POLL) {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                record.error = Some("the engine stopped".into());
                break;
            }
        };
        match event {
            Event::Token { text, .. } => {
                record.chunk_times.push(started.elapsed().as_secs_f64());
                record.text.push_str(&text);
            }
            Event::Done(c) => {
                record.prompt_tokens = c.usage.prompt_tokens;
                record.completion_tokens = c.usage.completion_tokens;
                record.cached_tokens = Some(c.usage.cached_tokens);
                if c.finish_reason == crate::engine::FinishReason::Cancelled {
                    record.error = Some(CANCELLED.into());
                }
                break;
            }
            Event::Error(message) => {
                record.error = Some(message);
                break;
            }
        }
    }
    record.e2e = started.elapsed().as_secs_f64();
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::PromptBody;

    /// The engine gets the prompt's ids and length, EOS ignored, greedy at temperature 0 and else the
    /// sampler's defaults at the prompt's temperature (what the HTTP body asks of servers).
    #[test]
    fn engine_requests_sample_at_the_prompts_temperature() {
        let prompt =
            |temperature| Prompt { body: PromptBody::Text("Hi".into()), ids: vec![3, 4], output_len: 7, temperature };
        let greedy = engine_request(&prompt(0.0));
        assert_eq!(
            (greedy.prompt_ids.as_slice(), greedy.stop.max_tokens, greedy.stop.ignore_eos),
            (&[3, 4][..], Some(7), true)
        );
        assert_eq!(greedy.sampling.temperature, 0.0);
        let sampled = engine_request(&prompt(0.9));
        assert_eq!(sampled.sampling, SamplingParams { temperature: 0.9, ..SamplingParams::default() });
    }
}
