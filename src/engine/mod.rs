//! The one engine every front end shares. It owns the model, the KV cache and a step-loop thread;
//! front ends submit tokenized requests and read events from their handle. Nothing async inside:
//! the loop is plain synchronous code, and channels are the only way in or out.

pub mod detok;
pub mod request;
pub mod sampler;
mod worker;

pub use request::{Completion, Event, FinishReason, Request, SamplingParams, StopConditions, Timings, Usage};

use crate::error::{Error, Result};
use crate::model::{Model, ModelInfo};
use crate::ops::PagedKvCache;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the engine sizes its work and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most tokens (prompt and reply) one sequence may hold: the model's trained context, or less.
    pub context_length: usize,
}

/// A running engine. Dropping it stops the step loop after the current step.
pub struct Engine {
    commands: Sender<worker::Command>,
    thread: Option<JoinHandle<()>>,
    info: ModelInfo,
    context_length: usize,
}

impl Engine {
    /// Allocates the KV cache and starts the step loop.
    pub fn start(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        device: Device,
        config: EngineConfig,
    ) -> Result<Self> {
        let info = model.info().clone();
        let context_length = config.context_length.min(info.context_length).max(1);
        let num_blocks = context_length.div_ceil(config.block_size);
        let cache = PagedKvCache::new(
            info.num_layers,
            num_blocks,
            config.block_size,
            info.num_kv_heads,
            info.head_dim,
            DType::F32,
            &device,
        )?;
        let (commands, inbox) = mpsc::channel();
        let worker = worker::Worker::new(model, tokenizer, cache, device, context_length);
        let thread = std::thread::Builder::new()
            .name("bodega-engine".into())
            .spawn(move || worker.run(inbox))
            .map_err(|e| Error::InvalidRequest(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { commands, thread: Some(thread), info, context_length })
    }

    /// Queues a request. Fails at once if it can never run (empty, or longer than the context).
    pub fn submit(&self, request: Request) -> Result<RequestHandle> {
        if request.prompt_ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if request.prompt_ids.len() >= self.context_length {
            return Err(Error::PromptTooLong { prompt_tokens: request.prompt_ids.len(), context: self.context_length });
        }
        if let Some(bad) = request.prompt_ids.iter().find(|&&t| t as usize >= self.info.vocab_size) {
            return Err(Error::InvalidRequest(format!("token id {bad} is outside the vocabulary")));
        }
        let (events, receiver) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = worker::Job { request, events, cancel: cancel.clone(), submitted: Instant::now() };
        self.commands.send(worker::Command::Submit(job)).map_err(|_| Error::EngineStopped)?;
        Ok(RequestHandle { events: receiver, cancel })
    }

    /// The loaded model's shapes.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// Most tokens one sequence may hold.
    pub fn context_length(&self) -> usize {
        self.context_length
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
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
