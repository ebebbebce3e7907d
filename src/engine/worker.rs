//! The engine thread: takes requests in arrival order and runs each through prefill and decode,
//! sending its events as tokens are produced.

use super::detok::{Detokenizer, StopMatcher, StopScan};
use super::request::{Completion, Event, FinishReason, Request, Timings, Usage};
use super::sampler::Sampler;
use crate::error::Result;
use crate::model::Model;
use crate::ops::PagedKvCache;
use crate::runner::{run_step, SeqChunk};
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

/// Messages to the engine thread.
pub enum Command {
    /// Run a request.
    Submit(Job),
    /// Stop the loop.
    Shutdown,
}

/// A request with its way back to the front end.
pub struct Job {
    pub request: Request,
    pub events: Sender<Event>,
    pub cancel: Arc<AtomicBool>,
    pub submitted: Instant,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Sends an event; a closed channel means the front end is gone, which cancels the request.
    fn send(&self, event: Event) {
        if self.events.send(event).is_err() {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// State owned by the engine thread.
pub struct Worker {
    model: Box<dyn Model>,
    tokenizer: Arc<Tokenizer>,
    cache: PagedKvCache,
    device: Device,
    context_length: usize,
    block_table: Vec<u32>,
}

impl Worker {
    pub fn new(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        cache: PagedKvCache,
        device: Device,
        context_length: usize,
    ) -> Self {
        let block_table = (0..cache.num_blocks() as u32).collect();
        Self { model, tokenizer, cache, device, context_length, block_table }
    }

    /// Serves requests until shut down or every sender is gone.
    pub fn run(self, inbox: Receiver<Command>) {
        while let Ok(Command::Submit(job)) = inbox.recv() {
            if let Err(e) = self.serve(&job) {
                job.send(Event::Error(e.to_string()));
            }
        }
    }

    fn serve(&self, job: &Job) -> Result<()> {
        let Request { prompt_ids, sampling, stop } = &job.request;
        let room = self.context_length - prompt_ids.len();
        let max_new = stop.max_tokens.unwrap_or(room).min(room);
        let mut sampler = Sampler::new(sampling.clone());
        let mut detok = Detokenizer::default();
        let mut stops = StopMatcher::new(&stop.stop_strings);
        let mut history = prompt_ids.clone();
        let prefill_start = Instant::now();
        let mut logits = self.step(prompt_ids, 0)?;
        let prefill_secs = prefill_start.elapsed().as_secs_f64();
        let mut first_token_at = None;
        let finish = loop {
            if job.cancelled() {
                break FinishReason::Cancelled;
            }
            if history.len() - prompt_ids.len() >= max_new {
                break FinishReason::Length;
            }
            let token = sampler.sample(&mut logits, &history);
            history.push(token);
            first_token_at.get_or_insert_with(Instant::now);
            if !stop.ignore_eos && self.tokenizer.is_stop(token) {
                job.send(Event::Token { id: token, text: String::new() });
                break FinishReason::Stop;
            }
            match stops.push(&detok.push(&self.tokenizer, token)?) {
                StopScan::Continue(text) => job.send(Event::Token { id: token, text }),
                StopScan::Stopped(text) => {
                    job.send(Event::Token { id: token, text });
                    break FinishReason::Stop;
                }
            }
            if history.len() - prompt_ids.len() < max_new && !job.cancelled() {
                logits = self.step(&[token], history.len() - 1)?;
            }
        };
        if finish != FinishReason::Stop {
            let rest = detok.flush(&self.tokenizer)? + &stops.finish();
            if !rest.is_empty() {
                job.send(Event::Token { id: *history.last().unwrap_or(&0), text: rest });
            }
        }
        let generated_ids = history[prompt_ids.len()..].to_vec();
        let end = Instant::now();
        let timings = timings(job.submitted, prompt_ids.len(), prefill_secs, first_token_at, generated_ids.len(), end);
        let usage = Usage { prompt_tokens: prompt_ids.len(), completion_tokens: generated_ids.len(), cached_tokens: 0 };
        job.send(Event::Done(Completion { finish_reason: finish, generated_ids, usage, timings }));
        Ok(())
    }

    /// Feeds `tokens` at positions `start..` and returns the last token's logits.
    fn step(&self, tokens: &[u32], start: usize) -> Result<Vec<f32>> {
        let blocks = (start + tokens.len()).div_ceil(self.cache.block_size());
        let chunk = SeqChunk { tokens, start, block_table: &self.block_table[..blocks], sample: true };
        let mut rows = run_step(self.model.as_ref(), &self.cache, &[chunk], &self.device)?;
        Ok(rows.pop().unwrap_or_default())
    }
}

fn timings(
    submitted: Instant,
    prompt_tokens: usize,
    prefill_secs: f64,
    first_token_at: Option<Instant>,
    generated: usize,
    end: Instant,
) -> Timings {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let per_sec = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let first = first_token_at.unwrap_or(end);
    Timings {
        ttft_ms: ms(first - submitted),
        prefill_tok_s: per_sec(prompt_tokens, prefill_secs),
        decode_tok_s: per_sec(generated.saturating_sub(1), (end - first).as_secs_f64()),
        total_ms: ms(end - submitted),
    }
}
