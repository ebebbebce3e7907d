//! The engine thread: takes requests as they arrive, and loops schedule → one forward pass → sample,
//! sending each request's events as its tokens are produced.

use super::detok::{Detokenizer, StopMatcher, StopScan};
use super::request::{Completion, Event, FinishReason, Request, Timings, Usage};
use super::sampler::Sampler;
use super::scheduler::{ScheduledChunk, Scheduler, SchedulerOutput, SeqId, Sequence};
use super::EngineStats;
use crate::error::Result;
use crate::model::Model;
use crate::ops::PagedKvCache;
use crate::runner::{run_step, SeqChunk};
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
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
    pub max_new_tokens: usize,
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

/// Per-request state the engine keeps beside the scheduler's sequence.
struct Active {
    job: Job,
    sampler: Sampler,
    detok: Detokenizer,
    stops: StopMatcher,
    prompt_len: usize,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
}

/// State owned by the engine thread.
pub struct Worker {
    pub model: Box<dyn Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub cache: PagedKvCache,
    pub device: Device,
    pub scheduler: Scheduler,
    pub stats: Arc<Mutex<EngineStats>>,
    active: HashMap<SeqId, Active>,
    next_id: SeqId,
}

impl Worker {
    /// A worker over a model, its cache and a scheduler sized for that cache.
    pub fn new(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        cache: PagedKvCache,
        device: Device,
        scheduler: Scheduler,
        stats: Arc<Mutex<EngineStats>>,
    ) -> Self {
        Self { model, tokenizer, cache, device, scheduler, stats, active: HashMap::new(), next_id: 0 }
    }

    /// Serves requests until shut down or every sender is gone.
    pub fn run(mut self, inbox: Receiver<Command>) {
        loop {
            if self.scheduler.is_idle() {
                match inbox.recv() {
                    Ok(Command::Submit(job)) => self.admit(job),
                    _ => return,
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(Command::Submit(job)) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return self.cancel_all(),
                }
            }
            self.reap_cancelled();
            if !self.scheduler.is_idle() {
                if let Err(e) = self.step() {
                    self.fail_all(&e.to_string());
                }
            }
            self.publish_stats();
        }
    }

    fn admit(&mut self, job: Job) {
        let id = self.next_id;
        self.next_id += 1;
        let prompt = job.request.prompt_ids.clone();
        let active = Active {
            sampler: Sampler::new(job.request.sampling.clone()),
            detok: Detokenizer::default(),
            stops: StopMatcher::new(&job.request.stop.stop_strings),
            prompt_len: prompt.len(),
            first_scheduled: None,
            first_token: None,
            job,
        };
        self.active.insert(id, active);
        self.scheduler.add(Sequence::new(id, prompt));
    }

    /// One forward pass over the scheduled work, then sampling for the sequences that need a token.
    fn step(&mut self) -> Result<()> {
        let out = self.scheduler.schedule();
        let started = Instant::now();
        let logits = {
            let chunks = self.chunks(&out);
            if chunks.is_empty() {
                return Ok(());
            }
            run_step(self.model.as_ref(), &self.cache, &chunks, &self.device)?
        };
        self.scheduler.commit(&out);
        for chunk in &out.chunks {
            if let Some(a) = self.active.get_mut(&chunk.seq) {
                a.first_scheduled.get_or_insert(started);
            }
        }
        let sampled: Vec<SeqId> = out.chunks.iter().filter(|c| c.sample).map(|c| c.seq).collect();
        let fed: usize = out.chunks.iter().map(|c| c.len).sum();
        let kv_read: usize = out.chunks.iter().map(|c| c.start + c.len).sum();
        let prefill = out.chunks.iter().any(|c| self.is_prefill(c));
        for (&id, row) in sampled.iter().zip(logits) {
            self.on_logits(id, row)?;
        }
        if let Ok(mut stats) = self.stats.lock() {
            stats.steps += 1;
            stats.preemptions += out.preempted.len() as u64;
            let seconds = started.elapsed().as_secs_f64();
            stats.tokens_per_s = sampled.len() as f64 / seconds.max(1e-9);
            stats.step_seconds.observe(seconds);
            let totals = if prefill { &mut stats.prefill_steps } else { &mut stats.decode_steps };
            totals.add(fed, seconds, kv_read);
        }
        Ok(())
    }

    /// Whether a chunk feeds prompt tokens (a preempted sequence's recompute counts as prefill too).
    fn is_prefill(&self, chunk: &ScheduledChunk) -> bool {
        let prompt_len = self.active.get(&chunk.seq).map_or(0, |a| a.prompt_len);
        chunk.len > 1 || chunk.start < prompt_len
    }

    fn chunks<'a>(&'a self, out: &SchedulerOutput) -> Vec<SeqChunk<'a>> {
        out.chunks
            .iter()
            .filter_map(|c| {
                let seq = self.scheduler.get(c.seq)?;
                Some(SeqChunk {
                    tokens: &seq.tokens[c.start..c.start + c.len],
                    start: c.start,
                    block_table: seq.block_table(),
                    sample: c.sample,
                })
            })
            .collect()
    }

    /// Samples a sequence's next token, streams its text and ends the request when a stop is met.
    fn on_logits(&mut self, id: SeqId, mut logits: Vec<f32>) -> Result<()> {
        let (Some(a), Some(seq)) = (self.active.get_mut(&id), self.scheduler.get(id)) else { return Ok(()) };
        let (token, logprobs) = a.sampler.sample_with_logprobs(&mut logits, &seq.tokens, a.prompt_len);
        let generated = seq.tokens.len() + 1 - a.prompt_len;
        self.scheduler.append_token(id, token);
        a.first_token.get_or_insert_with(Instant::now);
        let stop = &a.job.request.stop;
        let mut finish = None;
        if !stop.ignore_eos && self.tokenizer.is_stop(token) {
            a.job.send(Event::Token { id: token, text: String::new(), logprobs });
            finish = Some(FinishReason::Stop);
        } else {
            match a.stops.push(&a.detok.push(&self.tokenizer, token)?) {
                StopScan::Continue(text) => a.job.send(Event::Token { id: token, text, logprobs }),
                StopScan::Stopped(text) => {
                    a.job.send(Event::Token { id: token, text, logprobs });
                    finish = Some(FinishReason::Stop);
                }
            }
        }
        if finish.is_none() && generated >= a.job.max_new_tokens {
            finish = Some(FinishReason::Length);
        }
        if let Some(reason) = finish {
            self.complete(id, reason)?;
        }
        Ok(())
    }

    /// Sends `Done` and frees the sequence's blocks.
    fn complete(&mut self, id: SeqId, reason: FinishReason) -> Result<()> {
        let Some(mut a) = self.active.remove(&id) else { return Ok(()) };
        let Some(seq) = self.scheduler.finish(id) else { return Ok(()) };
        if reason != FinishReason::Stop {
            let rest = a.detok.flush(&self.tokenizer)? + &a.stops.finish();
            if !rest.is_empty() {
                a.job.send(Event::Token { id: *seq.tokens.last().unwrap_or(&0), text: rest, logprobs: None });
            }
        }
        let generated_ids = seq.tokens[a.prompt_len..].to_vec();
        let usage = Usage {
            prompt_tokens: a.prompt_len,
            completion_tokens: generated_ids.len(),
            cached_tokens: seq.num_cached,
        };
        let timings = timings(&a, generated_ids.len(), Instant::now());
        a.job.send(Event::Done(Completion { finish_reason: reason, generated_ids, usage, timings }));
        Ok(())
    }

    fn reap_cancelled(&mut self) {
        let cancelled: Vec<SeqId> = self.active.iter().filter(|(_, a)| a.job.cancelled()).map(|(&id, _)| id).collect();
        for id in cancelled {
            let _ = self.complete(id, FinishReason::Cancelled);
        }
    }

    fn cancel_all(&mut self) {
        let ids: Vec<SeqId> = self.active.keys().copied().collect();
        for id in ids {
            let _ = self.complete(id, FinishReason::Cancelled);
        }
    }

    /// A failed forward pass fails every request in flight (their caches may be half written).
    fn fail_all(&mut self, message: &str) {
        for (id, a) in self.active.drain() {
            a.job.send(Event::Error(message.to_string()));
            self.scheduler.finish(id);
        }
    }

    fn publish_stats(&self) {
        let (running, waiting) = self.scheduler.queue_lengths();
        if let Ok(mut stats) = self.stats.lock() {
            stats.running = running;
            stats.waiting = waiting;
            stats.blocks = self.scheduler.pool_stats();
        }
    }
}

fn timings(a: &Active, generated: usize, end: Instant) -> Timings {
    let secs = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    let per_sec = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let first = a.first_token.unwrap_or(end);
    let scheduled = a.first_scheduled.unwrap_or(first);
    Timings {
        ttft_ms: secs(a.job.submitted, first) * 1e3,
        prefill_tok_s: per_sec(a.prompt_len, secs(scheduled, first)),
        decode_tok_s: per_sec(generated.saturating_sub(1), secs(first, end)),
        total_ms: secs(a.job.submitted, end) * 1e3,
    }
}
