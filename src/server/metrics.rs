//! `GET /metrics`: Prometheus text. Engine gauges come from its snapshot; request counters are kept
//! by the handlers.

use super::AppState;
use crate::engine::STEP_BUCKETS;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Totals the handlers add to.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
}

impl Counters {
    /// Adds a finished request's usage.
    pub fn record(&self, usage: &crate::engine::Usage) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens.fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
        self.cached_tokens.fetch_add(usage.cached_tokens as u64, Ordering::Relaxed);
        self.generated_tokens.fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
    }
}

/// The metrics page.
pub fn render(state: &AppState) -> String {
    let s = state.engine.stats();
    let c = &state.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let prompt = load(&c.prompt_tokens);
    let hit_rate = if prompt == 0 { 0.0 } else { load(&c.cached_tokens) as f64 / prompt as f64 };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP bodega_{name} {help}\n# TYPE bodega_{name} {kind}\nbodega_{name} {value}");
    };
    metric("requests_running", "gauge", "Sequences in the running batch.", s.running as f64);
    metric("requests_waiting", "gauge", "Sequences waiting to start or resume.", s.waiting as f64);
    metric("kv_blocks_total", "gauge", "KV cache blocks in the pool.", s.blocks.total as f64);
    metric("kv_blocks_used", "gauge", "KV cache blocks held by sequences.", s.blocks.used as f64);
    metric("kv_blocks_cached", "gauge", "Free KV blocks that still hold a prefix-cache entry.", s.blocks.cached as f64);
    if let Some(window) = s.window_blocks {
        metric(
            "kv_window_blocks_total",
            "gauge",
            "KV blocks in the sliding-window layers' own pool.",
            window.total as f64,
        );
        metric("kv_window_blocks_used", "gauge", "Sliding-window KV blocks held by sequences.", window.used as f64);
    }
    metric(
        "prefix_cache_hit_rate",
        "gauge",
        "Prompt tokens served from the prefix cache / all prompt tokens.",
        hit_rate,
    );
    metric("preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", s.preemptions as f64);
    metric("requests_total", "counter", "Requests finished.", load(&c.requests) as f64);
    metric("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", prompt as f64);
    metric(
        "generation_tokens_total",
        "counter",
        "Tokens generated for finished requests.",
        load(&c.generated_tokens) as f64,
    );
    metric(
        "spec_proposed_tokens_total",
        "counter",
        "Speculative guesses the target verified.",
        s.speculation.proposed as f64,
    );
    metric("spec_accepted_tokens_total", "counter", "Speculative guesses accepted.", s.speculation.accepted as f64);
    metric(
        "spec_verifications_total",
        "counter",
        "Sequence-steps that verified guesses (each adds the accepted guesses and one token).",
        s.spec_verifications as f64,
    );
    let h = s.step_seconds;
    let _ = writeln!(out, "# HELP bodega_step_duration_seconds Duration of engine steps.");
    let _ = writeln!(out, "# TYPE bodega_step_duration_seconds histogram");
    for (bound, count) in STEP_BUCKETS.iter().zip(h.buckets) {
        let _ = writeln!(out, "bodega_step_duration_seconds_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "bodega_step_duration_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "bodega_step_duration_seconds_sum {}", h.sum);
    let _ = writeln!(out, "bodega_step_duration_seconds_count {}", h.count);
    out
}
