//! The engine thread: takes requests as they arrive, and loops schedule → one forward pass → sample,
//! sending each request's events as its tokens are produced.

use super::detok::{Detokenizer, StopMatcher, StopScan};
use super::request::{Completion, Event, FinishReason, Request, Timings, Usage};
use super::sampler::{logprobs, Distribution, Sampler};
use super::scheduler::{ScheduledChunk, Scheduler, SchedulerOutput, SeqId, Sequence};
use super::speculative::{verify_token, AdaptiveK, Proposal, ProposalRequest, SpecCounts, Speculation, Verdict};
use super::{EngineStats, TokenLogprobs};
use crate::error::Result;
use crate::model::Model;
use crate::ops::PagedKvCache;
use crate::runner::{Executor, RowWant, SeqChunk, StepRow, WindowBlocks};
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Messages to the engine thread.
pub enum Command {
    /// Run a request.
    Submit(Job),
    /// Switch speculative decoding on or off (when the engine has a proposer); acknowledged on the
    /// sender once done, which is also after the last step's statistics were published.
    Speculate(bool, Sender<()>),
    /// Forget the prefix cache's entries.
    ClearPrefixCache,
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
    /// How many guesses this sequence asks for next.
    adaptive: AdaptiveK,
    /// Its guesses proposed and accepted so far.
    spec: SpecCounts,
}

/// The engine's speculative decoding and its running totals.
struct SpecState {
    config: Speculation,
    enabled: bool,
    totals: SpecCounts,
    verifications: u64,
}

/// One step's work for the runner: the chunks, how many logits rows each needs, and what of those
/// rows its sampler needs back.
struct StepWork<'a> {
    chunks: Vec<SeqChunk<'a>>,
    rows: Vec<usize>,
    wants: Vec<RowWant>,
}

impl<'a> StepWork<'a> {
    /// The step's chunks for the runner, how many logits rows each needs, and what comes back of
    /// them: the argmax for a greedy sampler, the largest logits for a top-k sampler's plain row,
    /// whole rows otherwise (only those cross from a GPU).
    fn new(
        scheduler: &'a Scheduler,
        active: &HashMap<SeqId, Active>,
        window_group: bool,
        out: &SchedulerOutput,
    ) -> Self {
        let mut work = StepWork { chunks: Vec::new(), rows: Vec::new(), wants: Vec::new() };
        for c in &out.chunks {
            let Some(seq) = scheduler.get(c.seq) else { continue };
            work.chunks.push(SeqChunk {
                tokens: &seq.tokens[c.start..c.start + c.len],
                start: c.start,
                block_table: seq.block_table(),
                sample: c.sample,
                window_blocks: window_group
                    .then(|| WindowBlocks { first: seq.window_table().first(), blocks: seq.window_table().blocks() }),
            });
            work.rows.push(if c.sample { c.draft + 1 } else { 0 });
            work.wants.push(match active.get(&c.seq) {
                Some(a) if a.sampler.greedy_only() => RowWant::Greedy,
                Some(a) if c.draft == 0 => {
                    a.sampler.candidates_needed(&seq.tokens, a.prompt_len).map_or(RowWant::Logits, RowWant::Top)
                }
                _ => RowWant::Logits,
            });
        }
        work
    }
}

/// State owned by the engine thread.
pub struct Worker {
    pub model: Box<dyn Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub cache: PagedKvCache,
    /// Runs the forward passes on the device (replaying CUDA graphs where it can).
    executor: Executor,
    pub scheduler: Scheduler,
    pub stats: Arc<Mutex<EngineStats>>,
    active: HashMap<SeqId, Active>,
    next_id: SeqId,
    speculation: Option<SpecState>,
}

impl Worker {
    /// A worker over a model, its cache and a scheduler sized for that cache.
    pub fn new(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        cache: PagedKvCache,
        executor: Executor,
        scheduler: Scheduler,
        stats: Arc<Mutex<EngineStats>>,
        speculation: Option<Speculation>,
    ) -> Self {
        let speculation = speculation.map(|config| SpecState {
            config,
            enabled: true,
            totals: SpecCounts::default(),
            verifications: 0,
        });
        Self { model, tokenizer, cache, executor, scheduler, stats, active: HashMap::new(), next_id: 0, speculation }
    }

    /// Serves requests until shut down or every sender is gone.
    pub fn run(mut self, inbox: Receiver<Command>) {
        // Pool sizes are known before the first request; readers (/metrics) should see them.
        self.publish_stats();
        loop {
            if self.scheduler.is_idle() {
                match inbox.recv() {
                    Ok(Command::Shutdown) | Err(_) => return,
                    Ok(command) => self.obey(command),
                }
            }
            loop {
                match inbox.try_recv() {
                    Err(TryRecvError::Empty) => break,
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return self.cancel_all(),
                    Ok(command) => self.obey(command),
                }
            }
            self.reap_cancelled();
            if !self.scheduler.is_idle() {
                if let Err(e) = self.step() {
                    tracing::debug!("a step failed, failing the {} requests in flight: {e}", self.active.len());
                    self.fail_all(&e.to_string());
                }
            }
            self.publish_stats();
        }
    }

    fn obey(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.admit(job),
            Command::Speculate(on, done) => {
                if let Some(spec) = &mut self.speculation {
                    spec.enabled = on;
                }
                let _ = done.send(());
            }
            Command::ClearPrefixCache => self.scheduler.clear_prefix_cache(),
            Command::Shutdown => {}
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
            adaptive: AdaptiveK::new(self.speculation.as_ref().map_or(0, |s| s.config.max_tokens)),
            spec: SpecCounts::default(),
            job,
        };
        self.active.insert(id, active);
        self.scheduler.add(Sequence::new(id, prompt));
    }

    /// Guesses for the decoding sequences (when speculating), one forward pass over the scheduled
    /// work, then sampling or verification for the sequences that need tokens.
    fn step(&mut self) -> Result<()> {
        let started = Instant::now();
        let drafts = self.propose()?;
        let out = self.scheduler.schedule();
        let logits = {
            let work = StepWork::new(&self.scheduler, &self.active, self.cache.has_window_group(), &out);
            match work.chunks.is_empty() {
                true => None,
                false => Some(self.executor.run_step_rows(
                    self.model.as_ref(),
                    &self.cache,
                    &work.chunks,
                    &work.rows,
                    &work.wants,
                )),
            }
        };
        for &id in drafts.keys() {
            self.scheduler.take_draft(id);
        }
        let Some(logits) = logits.transpose()? else { return Ok(()) };
        self.scheduler.commit(&out);
        for chunk in &out.chunks {
            if let Some(a) = self.active.get_mut(&chunk.seq) {
                a.first_scheduled.get_or_insert(started);
            }
        }
        let sampled: Vec<&ScheduledChunk> = out.chunks.iter().filter(|c| c.sample).collect();
        let fed: usize = out.chunks.iter().map(|c| c.len).sum();
        let kv_read: usize = out.chunks.iter().map(|c| c.start + c.len).sum();
        let prefill = out.chunks.iter().any(|c| self.is_prefill(c));
        let mut rows = logits.into_iter();
        let mut generated = 0;
        for chunk in &sampled {
            let mine: Vec<StepRow> = rows.by_ref().take(chunk.draft + 1).collect();
            generated += match drafts.get(&chunk.seq) {
                Some(proposal) if chunk.draft > 0 => self.on_verify(chunk.seq, mine, proposal)?,
                _ => self.on_row(chunk.seq, mine.into_iter().next().unwrap_or(StepRow::Logits(Vec::new())))?,
            };
        }
        if let Ok(mut stats) = self.stats.lock() {
            stats.steps += 1;
            stats.preemptions += out.preempted.len() as u64;
            let seconds = started.elapsed().as_secs_f64();
            stats.tokens_per_s = sampled.len() as f64 / seconds.max(1e-9);
            stats.step_seconds.observe(seconds);
            let totals = if prefill { &mut stats.prefill_steps } else { &mut stats.decode_steps };
            totals.add(fed, generated, seconds, kv_read);
            if let Some(spec) = &self.speculation {
                stats.speculation = spec.totals;
                stats.spec_verifications = spec.verifications;
            }
        }
        Ok(())
    }

    /// Asks the proposer for guesses for the decoding sequences and hands them to the scheduler;
    /// nothing when speculation is off, or off for this step because too many sequences decode.
    fn propose(&mut self) -> Result<HashMap<SeqId, Proposal>> {
        let Some(spec) = self.speculation.as_mut().filter(|s| s.enabled) else { return Ok(HashMap::new()) };
        let decoding: Vec<&Sequence> = self.scheduler.decoding().collect();
        if decoding.is_empty() || decoding.len() > spec.config.max_batch {
            return Ok(HashMap::new());
        }
        let mut wanted = Vec::new();
        for seq in decoding {
            let Some(a) = self.active.get_mut(&seq.id) else { continue };
            // Room for the guesses and the token after them within max_tokens.
            let room = a.job.max_new_tokens.saturating_sub(seq.tokens.len() - a.prompt_len + 1);
            if room > 0 {
                wanted.push((seq, a.adaptive.next_k().min(room)));
            }
        }
        let requests: Vec<ProposalRequest<'_>> = wanted
            .into_iter()
            .filter(|&(_, k)| k > 0)
            .filter_map(|(seq, k)| {
                let a = self.active.get(&seq.id)?;
                Some(ProposalRequest {
                    seq: seq.id,
                    tokens: &seq.tokens,
                    prompt_len: a.prompt_len,
                    k,
                    sampling: &a.job.request.sampling,
                })
            })
            .collect();
        if requests.is_empty() {
            return Ok(HashMap::new());
        }
        let proposals = spec.config.proposer.propose(&requests)?;
        let drafts: HashMap<SeqId, Proposal> = requests
            .iter()
            .zip(proposals)
            .filter(|(_, p)| !p.tokens.is_empty())
            .map(|(r, mut p)| {
                p.tokens.truncate(r.k);
                (r.seq, p)
            })
            .collect();
        for (&id, proposal) in &drafts {
            self.scheduler.set_draft(id, &proposal.tokens);
        }
        Ok(drafts)
    }

    /// Whether a chunk feeds prompt tokens (a preempted sequence's recompute counts as prefill too).
    fn is_prefill(&self, chunk: &ScheduledChunk) -> bool {
        let prompt_len = self.active.get(&chunk.seq).map_or(0, |a| a.prompt_len);
        chunk.len > 1 + chunk.draft || chunk.start < prompt_len
    }

    /// Samples a sequence's next token (or takes the greedy one the runner picked), streams its text
    /// and ends the request when a stop is met; returns how many tokens it produced (0 for a sequence
    /// that is gone).
    fn on_row(&mut self, id: SeqId, row: StepRow) -> Result<usize> {
        let (Some(a), Some(seq)) = (self.active.get_mut(&id), self.scheduler.get(id)) else { return Ok(0) };
        let (token, logprobs) = match row {
            StepRow::Greedy(token) => (token, None),
            StepRow::Candidates(candidates) => {
                let dist = a.sampler.candidate_distribution(candidates, &seq.tokens, a.prompt_len);
                (a.sampler.draw(&dist), None)
            }
            StepRow::Logits(mut logits) => a.sampler.sample_with_logprobs(&mut logits, &seq.tokens, a.prompt_len),
        };
        self.scheduler.append_token(id, token);
        if let Some(reason) = self.emit(id, token, logprobs)? {
            self.complete(id, reason)?;
        }
        Ok(1)
    }

    /// Verifies a sequence's guesses against the target's logits at its last token and at each
    /// guess (`rows`), then streams the accepted guesses and the token after them (a replacement or
    /// a bonus) as if sampled one by one, and keeps the accepted guesses' keys and values; returns
    /// how many tokens it produced.
    fn on_verify(&mut self, id: SeqId, rows: Vec<StepRow>, proposal: &Proposal) -> Result<usize> {
        let (Some(a), Some(seq)) = (self.active.get_mut(&id), self.scheduler.get(id)) else { return Ok(0) };
        let guesses = &proposal.tokens[..rows.len() - 1];
        let mut history = seq.tokens.clone();
        let mut emitted: Vec<(u32, Option<TokenLogprobs>)> = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let (p, raw) = match row {
                // A greedy-only sampler's distribution is its argmax with probability 1.
                StepRow::Greedy(token) => (Distribution(vec![(token, 1.0)]), None),
                StepRow::Candidates(candidates) => {
                    (a.sampler.candidate_distribution(candidates, &history, a.prompt_len), None)
                }
                StepRow::Logits(mut row) => {
                    let raw = a.job.request.sampling.logprobs.map(|n| (row.clone(), n));
                    (a.sampler.distribution(&mut row, &history, a.prompt_len), raw)
                }
            };
            let (token, last) = match guesses.get(i) {
                Some(&guess) => {
                    let q = proposal.dists.as_ref().and_then(|d| d.get(i));
                    match verify_token(&mut a.sampler, &p, q, guess) {
                        Verdict::Accepted => (guess, false),
                        Verdict::Rejected(replacement) => (replacement, true),
                    }
                }
                None => (a.sampler.draw(&p), true),
            };
            emitted.push((token, raw.map(|(logits, n)| logprobs(&logits, token, n))));
            history.push(token);
            if last {
                break;
            }
        }
        let accepted = emitted.len() - 1;
        if !proposal.weak {
            a.adaptive.record(accepted);
        }
        a.spec.add(guesses.len(), accepted);
        if let Some(spec) = &mut self.speculation {
            spec.totals.add(guesses.len(), accepted);
            spec.verifications += 1;
        }
        for (produced, (token, logprobs)) in emitted.into_iter().enumerate() {
            self.scheduler.append_token(id, token);
            if let Some(reason) = self.emit(id, token, logprobs)? {
                self.complete(id, reason)?;
                return Ok(produced + 1);
            }
        }
        self.scheduler.accept_draft(id, accepted);
        Ok(accepted + 1)
    }

    /// Streams a token just appended to the sequence; the reason to finish, when a stop is met.
    fn emit(&mut self, id: SeqId, token: u32, logprobs: Option<TokenLogprobs>) -> Result<Option<FinishReason>> {
        let (Some(a), Some(seq)) = (self.active.get_mut(&id), self.scheduler.get(id)) else { return Ok(None) };
        let generated = seq.tokens.len() - a.prompt_len;
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
        Ok(finish)
    }

    /// Frees the sequence's blocks, publishes the pool's new state, then sends `Done`: a client that
    /// has its reply never reads gauges that still count its blocks.
    fn complete(&mut self, id: SeqId, reason: FinishReason) -> Result<()> {
        let Some(mut a) = self.active.remove(&id) else { return Ok(()) };
        if let Some(spec) = &mut self.speculation {
            spec.config.proposer.forget(id);
        }
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
        let speculative = self.speculation.is_some().then_some(a.spec);
        self.publish_stats();
        a.job.send(Event::Done(Completion { finish_reason: reason, generated_ids, usage, timings, speculative }));
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
        let failed: Vec<Active> = self
            .active
            .drain()
            .map(|(id, a)| {
                self.scheduler.finish(id);
                if let Some(spec) = &mut self.speculation {
                    spec.config.proposer.forget(id);
                }
                a
            })
            .collect();
        self.publish_stats();
        for a in failed {
            a.job.send(Event::Error(message.to_string()));
        }
    }

    fn publish_stats(&self) {
        let (running, waiting) = self.scheduler.queue_lengths();
        if let Ok(mut stats) = self.stats.lock() {
            stats.running = running;
            stats.waiting = waiting;
            stats.blocks = self.scheduler.pool_stats();
            stats.window_blocks = self.scheduler.window_pool_stats();
            stats.graph_captures = self.executor.graphs_captured();
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
