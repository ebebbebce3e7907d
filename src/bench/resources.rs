//! What the in-process engine tells beyond latencies: prefill and decode speed from its own step
//! timings, the memory bandwidth a decode step achieves (weights plus the KV it read, over the step's
//! time) against the machine's peak, and how much memory the run held at its fullest.

use crate::engine::{Engine, EngineStats};
use rayon::prelude::*;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the sampler reads the engine's state during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Buffer the bandwidth probe streams through: far larger than any cache.
const PROBE_BYTES: usize = 512 << 20;

/// The engine's view of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineMetrics {
    /// Tokens per second of the steps that carried prefill chunks.
    pub prefill_tok_s: Option<f64>,
    /// Tokens per second the decode-only steps produced (with speculation: accepted guesses plus
    /// one per verification; rejected guesses fed to the model do not count).
    pub decode_tok_s: Option<f64>,
    /// Mean milliseconds of a decode-only step.
    pub decode_step_ms: Option<f64>,
    /// Bytes of weights and KV those steps read, per second, in GB/s.
    pub decode_bandwidth_gb_s: Option<f64>,
    /// The same as a share of the machine's peak bandwidth, in percent.
    pub decode_bandwidth_pct: Option<f64>,
    /// Weights plus the most KV cache in use at once, in bytes.
    pub peak_memory_bytes: u64,
    /// The process's peak resident memory so far (Linux), in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The most sequences running in one step.
    pub peak_running: usize,
    /// Sequences preempted for lack of KV blocks.
    pub preemptions: u64,
    /// CUDA graphs captured during the run, recaptures included.
    pub graph_captures: usize,
    /// Speculative guesses the target verified (0 without speculation).
    pub spec_proposed: u64,
    /// Speculative guesses it accepted.
    pub spec_accepted: u64,
    /// Accepted ÷ proposed guesses.
    pub spec_acceptance_rate: Option<f64>,
    /// Tokens a speculating sequence-step yielded on average: accepted guesses per verification plus
    /// the one token the target adds (vLLM's "mean acceptance length").
    pub spec_mean_accepted_length: Option<f64>,
}

/// Watches an engine during a run for peaks that snapshots before and after cannot see.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, usize)>,
    before: EngineStats,
}

impl Sampler {
    /// Starts watching.
    pub fn start(engine: Arc<Engine>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let before = engine.stats();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut blocks, mut running) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let s = engine.stats();
                blocks = blocks.max(s.blocks.used);
                running = running.max(s.running);
                std::thread::sleep(SAMPLE_EVERY);
            }
            (blocks, running)
        });
        Self { stop, thread, before }
    }

    /// Stops watching and computes the run's engine metrics.
    pub fn finish(self, engine: &Engine, peak_bandwidth_gb_s: Option<f64>) -> EngineMetrics {
        self.stop.store(true, Ordering::Relaxed);
        let (peak_blocks, peak_running) = self.thread.join().unwrap_or((0, 0));
        let after = engine.stats();
        let (_, block_size) = engine.kv_blocks();
        let kv_per_token = engine.kv_bytes_per_token();
        let prefill = after.prefill_steps.since(&self.before.prefill_steps);
        let decode = after.decode_steps.since(&self.before.decode_steps);
        let rate = |tokens: u64, seconds: f64| (seconds > 0.0).then(|| tokens as f64 / seconds);
        let read = decode.steps as f64 * engine.model_info().step_weight_bytes as f64
            + decode.kv_tokens_read as f64 * kv_per_token as f64;
        let bandwidth = rate(1, decode.seconds).map(|per_s| read * per_s / 1e9);
        let spec_proposed = after.speculation.proposed - self.before.speculation.proposed;
        let spec_accepted = after.speculation.accepted - self.before.speculation.accepted;
        let verifications = after.spec_verifications - self.before.spec_verifications;
        EngineMetrics {
            prefill_tok_s: rate(prefill.tokens, prefill.seconds),
            decode_tok_s: rate(decode.generated, decode.seconds),
            decode_step_ms: (decode.steps > 0).then(|| decode.seconds * 1e3 / decode.steps as f64),
            decode_bandwidth_gb_s: bandwidth,
            decode_bandwidth_pct: bandwidth.zip(peak_bandwidth_gb_s).map(|(got, peak)| 100.0 * got / peak),
            peak_memory_bytes: (engine.model_info().weight_bytes + peak_blocks * block_size * kv_per_token) as u64,
            peak_rss_bytes: peak_rss_bytes(),
            peak_running: peak_running.max(after.running),
            preemptions: after.preemptions - self.before.preemptions,
            graph_captures: after.graph_captures - self.before.graph_captures,
            spec_proposed,
            spec_accepted,
            spec_acceptance_rate: (spec_proposed > 0).then(|| spec_accepted as f64 / spec_proposed as f64),
            spec_mean_accepted_length: (verifications > 0).then(|| 1.0 + spec_accepted as f64 / verifications as f64),
        }
    }
}

/// `VmHWM` of this process, where /proc says it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The CPU's sustainable read bandwidth in GB/s with the threads the model uses: the best of three
/// parallel passes summing a buffer far larger than the caches (what a decode step does with weights).
pub fn measure_cpu_bandwidth() -> f64 {
    let words = vec![1u64; PROBE_BYTES / 8];
    let chunk = words.len() / (rayon::current_num_threads() * 8).max(1);
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let sum: u64 = words.par_chunks(chunk.max(1)).map(|c| c.iter().fold(0u64, |a, &w| a.wrapping_add(w))).sum();
            std::hint::black_box(sum);
            PROBE_BYTES as f64 / started.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    pub os: String,
    pub arch: String,
    pub cpu: Option<String>,
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    /// Peak memory bandwidth used for the percentages, in GB/s.
    pub peak_bandwidth_gb_s: Option<f64>,
    /// `measured` (the CPU probe), `published` (a Mac GPU's figure from `apple_chips`) or `given`
    /// (--peak-bandwidth).
    pub peak_bandwidth_source: Option<String>,
}

impl Machine {
    /// This machine, with the peak bandwidth the report uses.
    pub fn here(peak_bandwidth: Option<(f64, &str)>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
        };
        Machine {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu: field(&cpuinfo, "model name"),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: field(&meminfo, "MemTotal")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|kib| kib * 1024),
            peak_bandwidth_gb_s: peak_bandwidth.map(|p| p.0),
            peak_bandwidth_source: peak_bandwidth.map(|p| p.1.to_string()),
        }
    }
}
