//! The one engine every front end shares. It owns the model, the KV cache and a step-loop thread;
//! front ends submit tokenized requests and read events from their handle. Nothing async inside:
//! the loop is plain synchronous code, and channels are the only way in or out.
//!
//! Every step is one forward pass over the decode tokens of running sequences and prefill chunks of
//! waiting ones (`scheduler` has the rule), over a paged KV cache with prefix caching (`kv`).

pub mod detok;
pub mod kv;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod speculative;
mod worker;

pub use request::{
    Completion, Event, FinishReason, Request, SamplingParams, StopConditions, Timings, TokenLogprobs, Usage,
};

use crate::error::{Error, Result};
use crate::model::{Model, ModelInfo};
use crate::ops::{KvShape, PagedKvCache};
use crate::tokenizer::Tokenizer;
use crate::unified_memory::activation_bytes;
use candle_core::{DType, Device};
use kv::{KvLayout, PoolStats};
use scheduler::{Scheduler, SchedulerConfig};
use speculative::{SpecCounts, Speculation};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the engine sizes its work and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most tokens (prompt and reply) one sequence may hold: the model's trained context, or less.
    pub context_length: usize,
    /// Most sequences in one step.
    pub max_seqs: usize,
    /// Most tokens in one step (decode tokens plus prefill chunks).
    pub max_batched_tokens: usize,
    /// Bytes of KV cache; `None`: [`default_kv_memory`].
    pub kv_memory: Option<u64>,
    /// Reuse the cached blocks of shared prompt prefixes.
    pub prefix_caching: bool,
    /// Dtype of the KV cache; `None`: the device's ([`crate::device::kv_dtype`]). Tests pin f32 to
    /// hold a GPU backend to the CPU's tolerances.
    pub kv_dtype: Option<DType>,
    /// Replay plain decode steps from captured CUDA graphs (on a CUDA GPU; `--eager` turns it off).
    pub cuda_graphs: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            context_length: usize::MAX,
            max_seqs: 64,
            max_batched_tokens: 512,
            kv_memory: None,
            prefix_caching: true,
            kv_dtype: None,
            cuda_graphs: true,
        }
    }
}

/// The default KV budget where the device has no unified-memory plan (`crate::unified_memory` on a
/// Mac's GPU): a quarter of the memory available now (after the weights are loaded), leaving the rest
/// to the OS and other programs, and never more than `max_seqs` full-context sequences need.
pub fn default_kv_memory(needed: u64) -> u64 {
    let available = available_memory().unwrap_or(4 << 30);
    (available / 4).min(needed)
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where it cannot be read).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A snapshot of the engine for front ends (status lines, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub running: usize,
    /// Sequences waiting to start (or to resume after preemption).
    pub waiting: usize,
    /// KV blocks: total, used, free, cached.
    pub blocks: PoolStats,
    /// The same for the sliding-window layers' own pool, when the model has some.
    pub window_blocks: Option<PoolStats>,
    /// Sequences preempted (their blocks taken back, to be recomputed) since the engine started.
    pub preemptions: u64,
    /// Steps run since the engine started.
    pub steps: u64,
    /// Tokens sampled in the last step divided by its duration.
    pub tokens_per_s: f64,
    /// How long steps take.
    pub step_seconds: StepHistogram,
    /// Steps that only decode (one token per sequence): the memory-bound work.
    pub decode_steps: StepTotals,
    /// Steps that carry at least one prefill chunk: the compute-bound work.
    pub prefill_steps: StepTotals,
    /// Speculative guesses proposed and accepted since the engine started.
    pub speculation: SpecCounts,
    /// Speculating sequence-steps verified since the engine started (each yields the accepted
    /// guesses plus one token).
    pub spec_verifications: u64,
    /// CUDA graphs captured since the engine started, recaptures included (0 without graphs): a
    /// run that keeps capturing pays an eager step and a capture each time.
    pub graph_captures: usize,
}

/// Running totals over one kind of step, so that a benchmark can turn step timings into tok/s and
/// achieved memory bandwidth without sampling every step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTotals {
    /// Steps counted.
    pub steps: u64,
    /// Tokens those steps fed through the model.
    pub tokens: u64,
    /// Tokens those steps produced for their requests (with speculation, the accepted guesses plus
    /// one per verification, not the guesses fed): what a decode rate counts.
    pub generated: u64,
    /// Wall time of those steps' forward passes and sampling.
    pub seconds: f64,
    /// Cached keys and values the steps' attention read, in tokens (summed over sequences).
    pub kv_tokens_read: u64,
}

impl StepTotals {
    /// Adds one step.
    pub fn add(&mut self, tokens: usize, generated: usize, seconds: f64, kv_tokens_read: usize) {
        self.steps += 1;
        self.tokens += tokens as u64;
        self.generated += generated as u64;
        self.seconds += seconds;
        self.kv_tokens_read += kv_tokens_read as u64;
    }

    /// What happened between two snapshots (`earlier` taken first).
    pub fn since(&self, earlier: &StepTotals) -> StepTotals {
        StepTotals {
            steps: self.steps - earlier.steps,
            tokens: self.tokens - earlier.tokens,
            generated: self.generated - earlier.generated,
            seconds: self.seconds - earlier.seconds,
            kv_tokens_read: self.kv_tokens_read - earlier.kv_tokens_read,
        }
    }
}

/// Upper bounds (seconds) of the step-time histogram's buckets.
pub const STEP_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A cumulative histogram of step durations (Prometheus style: counts of steps at most each bound).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepHistogram {
    /// Steps at most `STEP_BUCKETS[i]` seconds long.
    pub buckets: [u64; STEP_BUCKETS.len()],
    /// All steps.
    pub count: u64,
    /// Total seconds.
    pub sum: f64,
}

impl StepHistogram {
    /// Records one step.
    pub fn observe(&mut self, seconds: f64) {
        for (bound, count) in STEP_BUCKETS.iter().zip(&mut self.buckets) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// A running engine. Dropping it cancels what is in flight and stops the step loop.
pub struct Engine {
    commands: Sender<worker::Command>,
    thread: Option<JoinHandle<()>>,
    info: ModelInfo,
    context_length: usize,
    block_size: usize,
    num_blocks: usize,
    kv_dtype: DType,
    stats: Arc<Mutex<EngineStats>>,
}

impl Engine {
    /// Allocates the KV cache from the memory budget and starts the step loop.
    pub fn start(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        device: Device,
        config: EngineConfig,
    ) -> Result<Self> {
        Self::start_with(model, tokenizer, device, config, None)
    }

    /// [`Engine::start`] with speculative decoding: the proposer gets room for as many tokens as the
    /// engine's own KV pool holds.
    pub fn start_with(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        device: Device,
        config: EngineConfig,
        mut speculation: Option<Speculation>,
    ) -> Result<Self> {
        let info = model.info().clone();
        let bs = config.block_size;
        if bs == 0 || config.max_seqs == 0 || config.max_batched_tokens == 0 {
            return Err(Error::InvalidRequest(
                "block size, --max-seqs and --max-batched-tokens must be positive".into(),
            ));
        }
        let kv_dtype = config.kv_dtype.unwrap_or_else(|| crate::device::kv_dtype(&device));
        let per_block = PagedKvCache::bytes_per_block(info.num_layers, bs, info.num_kv_heads, info.head_dim, kv_dtype);
        let context = config.context_length.min(info.context_length).max(2);
        let layout =
            KvLayout::new(&info.layer_windows, context, bs, config.max_batched_tokens, per_block / info.num_layers);
        let needed = (config.max_seqs * layout.bytes_per_seq()) as u64;
        let budget = match crate::device::unified_memory(&device) {
            Some(memory) => {
                let activations = activation_bytes(&info, config.max_batched_tokens, config.max_seqs, context);
                let min = layout.min_bytes() as u64;
                memory.kv_pool(info.weight_bytes as u64, activations, config.kv_memory, needed, min)?
            }
            None => config.kv_memory.unwrap_or_else(|| default_kv_memory(needed)),
        };
        let (num_blocks, num_window_blocks) = layout.split(budget, config.max_seqs);
        if num_blocks < 2 || budget < layout.min_bytes() as u64 {
            return Err(Error::InvalidRequest(format!(
                "a KV budget of {budget} bytes holds no blocks (it needs at least {} bytes for blocks of {bs} tokens)",
                layout.min_bytes()
            )));
        }
        let context_length = context.min(num_blocks * bs);
        let shape =
            KvShape { block_size: bs, num_kv_heads: info.num_kv_heads, head_dim: info.head_dim, dtype: kv_dtype };
        let cache = PagedKvCache::with_window_group(&layout.windowed, num_blocks, num_window_blocks, shape, &device)?;
        let mut scheduler = Scheduler::new(
            SchedulerConfig {
                block_size: bs,
                max_batched_tokens: config.max_batched_tokens,
                max_seqs: config.max_seqs,
            },
            num_blocks,
            config.prefix_caching,
        );
        if layout.window > 0 {
            scheduler = scheduler.with_window(layout.window, num_window_blocks, config.prefix_caching);
        }
        if let Some(spec) = &mut speculation {
            spec.proposer.reserve(num_blocks, bs)?;
        }
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (commands, inbox) = mpsc::channel();
        let worker = worker::Worker::new(
            model,
            tokenizer,
            cache,
            crate::runner::Executor::new(device, config.cuda_graphs),
            scheduler,
            stats.clone(),
            speculation,
        );
        let thread = std::thread::Builder::new()
            .name("bodega-engine".into())
            .spawn(move || worker.run(inbox))
            .map_err(|e| Error::InvalidRequest(format!("cannot start the engine thread: {e}")))?;
        tracing::debug!(
            "KV cache: {num_blocks} blocks of {bs} tokens, {num_window_blocks} for the window group ({} MiB)",
            (num_blocks * layout.bytes_per_block + num_window_blocks * layout.window_bytes_per_block) >> 20
        );
        Ok(Self { commands, thread: Some(thread), info, context_length, block_size: bs, num_blocks, kv_dtype, stats })
    }

    /// Queues a request. Fails at once if it can never run: empty, or a prompt plus `max_tokens`
    /// beyond the context (which is also capped by what the whole KV pool holds).
    pub fn submit(&self, request: Request) -> Result<RequestHandle> {
        let prompt = request.prompt_ids.len();
        if prompt == 0 {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if prompt >= self.context_length {
            return Err(Error::PromptTooLong { prompt_tokens: prompt, context: self.context_length });
        }
        if let Some(bad) = request.prompt_ids.iter().find(|&&t| t as usize >= self.info.vocab_size) {
            return Err(Error::InvalidRequest(format!("token id {bad} is outside the vocabulary")));
        }
        let room = self.context_length - prompt;
        let max_new_tokens = match request.stop.max_tokens {
            Some(0) => return Err(Error::InvalidRequest("max_tokens must be at least 1".into())),
            Some(n) if n > room => {
                return Err(Error::InvalidRequest(format!(
                    "prompt ({prompt} tokens) plus max_tokens ({n}) exceeds the context of {} tokens",
                    self.context_length
                )))
            }
            Some(n) => n,
            None => room,
        };
        let (events, receiver) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = worker::Job { request, max_new_tokens, events, cancel: cancel.clone(), submitted: Instant::now() };
        self.commands.send(worker::Command::Submit(job)).map_err(|_| Error::EngineStopped)?;
        Ok(RequestHandle { events: receiver, cancel })
    }

    /// Most tokens one sequence may hold.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Shapes and sizes of the loaded model.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// Bytes of cached keys and values one token takes over all layers (f32 on the CPU, f16 on GPUs).
    pub fn kv_bytes_per_token(&self) -> usize {
        PagedKvCache::bytes_per_block(
            self.info.num_layers,
            1,
            self.info.num_kv_heads,
            self.info.head_dim,
            self.kv_dtype,
        )
    }

    /// KV blocks in the pool and tokens per block.
    pub fn kv_blocks(&self) -> (usize, usize) {
        (self.num_blocks, self.block_size)
    }

    /// Switches speculative decoding on or off for the requests that follow (an engine started
    /// without a proposer ignores it): a benchmark compares both on one loaded model.
    pub fn set_speculation(&self, on: bool) -> Result<()> {
        let (done, ack) = std::sync::mpsc::channel();
        self.commands.send(worker::Command::Speculate(on, done)).map_err(|_| Error::EngineStopped)?;
        // Waiting for the engine thread means the statistics of every step before the switch are
        // published, so a bench run that snapshots them next counts none of the previous run's work.
        ack.recv().map_err(|_| Error::EngineStopped)
    }

    /// Forgets the prefix cache, so that the requests that follow start cold.
    pub fn clear_prefix_cache(&self) -> Result<()> {
        self.commands.send(worker::Command::ClearPrefixCache).map_err(|_| Error::EngineStopped)
    }

    /// The engine's state after its last step.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(worker::Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A submitted request: its events, and its cancellation (dropping the handle cancels).
pub struct RequestHandle {
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// The next event; `None` once the engine has sent the last one.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// The next event if one arrives within `timeout` (`Disconnected` after the last one), so that
    /// a front end can check for Ctrl-C between tokens.
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// Asks the engine to stop this request; it ends with `FinishReason::Cancelled` within a step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// A token that cancels this request when dropped, for code that does not own the handle (an
    /// HTTP handler whose client may go away while another task reads the events).
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.cancel.clone())
    }

    /// Reads events until `Done` (or an error), returning the completion and the streamed text.
    pub fn wait(&self) -> Result<(Completion, String)> {
        let mut text = String::new();
        while let Some(event) = self.recv() {
            match event {
                Event::Token { text: piece, .. } => text.push_str(&piece),
                Event::Done(completion) => return Ok((completion, text)),
                Event::Error(message) => return Err(Error::InvalidRequest(message)),
            }
        }
        Err(Error::EngineStopped)
    }
}

/// Cancels its request when dropped (see [`RequestHandle::cancel_on_drop`]).
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
