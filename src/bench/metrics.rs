//! What one benchmark run measured, with vLLM's `bench serve` definitions so that numbers line up:
//! TTFT (send → first content), TPOT ((E2E − TTFT) ÷ (output tokens − 1), per request), ITL (the gaps
//! between successive streamed chunks, pooled over requests), E2E latency, throughput over the run's
//! wall time, peak output tok/s in one-second bins, and goodput under SLOs. Token counts come from each
//! response's `usage`, never from counting chunks. Pure arithmetic, tested against hand-computed cases.

use serde::Serialize;

/// One request as the load generator saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    /// Which class of a mixed workload it belongs to (0 for a single workload).
    pub class: usize,
    /// Index of its prompt in the workload (to pair outputs for `--check`).
    pub prompt_index: usize,
    /// When it was sent, in seconds since the run started.
    pub sent_at: f64,
    /// Arrival of each streamed chunk that carried content, in seconds since it was sent.
    pub chunk_times: Vec<f64>,
    /// Seconds from sending to the end of the response.
    pub e2e: f64,
    /// Prompt tokens, from `usage`.
    pub prompt_tokens: usize,
    /// Generated tokens, from `usage`.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache, when the target reports them.
    pub cached_tokens: Option<usize>,
    /// The output length the workload asked for (to warn when a target stopped early).
    pub requested_tokens: usize,
    /// The generated text (for `--check`).
    pub text: String,
    /// Why it failed, if it did; failed requests count in no latency metric.
    pub error: Option<String>,
}

impl RequestRecord {
    fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Time to first token in seconds (the whole request when nothing streamed).
    pub fn ttft(&self) -> f64 {
        self.chunk_times.first().copied().unwrap_or(self.e2e)
    }

    /// Time per output token after the first, in seconds; None for one-token outputs.
    pub fn tpot(&self) -> Option<f64> {
        (self.completion_tokens > 1).then(|| (self.e2e - self.ttft()) / (self.completion_tokens - 1) as f64)
    }
}

/// Service-level objectives for goodput, in milliseconds; a request meets them when it meets each
/// one that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// Time per output token.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency.
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Whether any objective is set.
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2el_ms.is_some()
    }

    fn met_by(&self, r: &RequestRecord) -> bool {
        let within = |limit: Option<f64>, seconds: f64| limit.is_none_or(|ms| seconds * 1e3 <= ms);
        within(self.ttft_ms, r.ttft()) && within(self.tpot_ms, r.tpot().unwrap_or(0.0)) && within(self.e2el_ms, r.e2e)
    }
}

/// Mean, spread and percentiles of one latency, in milliseconds (vLLM's `*_ttft_ms` family).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Distribution {
    pub mean: f64,
    pub std: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Distribution {
    /// Summarises samples given in seconds; all zero when there are none.
    pub fn of_seconds(samples: &[f64]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let var = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / ms.len() as f64;
        Self {
            mean,
            std: var.sqrt(),
            median: percentile(&ms, 50.0),
            p90: percentile(&ms, 90.0),
            p99: percentile(&ms, 99.0),
        }
    }
}

/// The p-th percentile of sorted samples with linear interpolation between closest ranks (numpy's
/// default, which vLLM uses).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Everything one run of one workload class measured. It serialises flat with vLLM's key names
/// (`mean_ttft_ms`, `p99_itl_ms`, ...) so that reports line up with `vllm bench serve` output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(into = "serde_json::Map<String, serde_json::Value>")]
pub struct Summary {
    /// Wall time of the run, in seconds.
    pub duration: f64,
    /// Requests that finished.
    pub completed: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Why the first failed request failed (None when none did): the warning shows it.
    pub first_error: Option<String>,
    /// Requests that generated fewer tokens than asked (the target stopped early).
    pub stopped_early: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Requests per second that met every SLO (None without `--slo`).
    pub request_goodput: Option<f64>,
    /// Generated tokens per second.
    pub output_throughput: f64,
    /// Prompt plus generated tokens per second.
    pub total_token_throughput: f64,
    /// The most tokens generated in any one-second bin of the run.
    pub max_output_tokens_per_s: f64,
    /// The most requests in flight at once.
    pub max_concurrent_requests: usize,
    pub ttft_ms: Distribution,
    pub tpot_ms: Distribution,
    pub itl_ms: Distribution,
    pub e2el_ms: Distribution,
    /// Share of prompt tokens served from the prefix cache (None when the target does not say).
    pub prefix_cache_hit_rate: Option<f64>,
}

impl From<Summary> for serde_json::Map<String, serde_json::Value> {
    fn from(s: Summary) -> Self {
        use serde_json::json;
        let mut map = serde_json::Map::new();
        let scalars = json!({
            "duration": s.duration,
            "completed": s.completed,
            "failed": s.failed,
            "first_error": s.first_error,
            "stopped_early": s.stopped_early,
            "total_input_tokens": s.total_input_tokens,
            "total_output_tokens": s.total_output_tokens,
            "request_throughput": s.request_throughput,
            "request_goodput": s.request_goodput,
            "output_throughput": s.output_throughput,
            "total_token_throughput": s.total_token_throughput,
            "max_output_tokens_per_s": s.max_output_tokens_per_s,
            "max_concurrent_requests": s.max_concurrent_requests,
            "prefix_cache_hit_rate": s.prefix_cache_hit_rate,
        });
        if let serde_json::Value::Object(scalars) = scalars {
            map.extend(scalars);
        }
        for (name, d) in [("ttft", s.ttft_ms), ("tpot", s.tpot_ms), ("itl", s.itl_ms), ("e2el", s.e2el_ms)] {
            for (stat, value) in
                [("mean", d.mean), ("std", d.std), ("median", d.median), ("p90", d.p90), ("p99", d.p99)]
            {
                map.insert(format!("{stat}_{name}_ms"), json!(value));
            }
        }
        map
    }
}

impl Summary {
    /// Summarises the records of one class of a run that lasted `duration` seconds.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a RequestRecord>, duration: f64, slo: &Slo) -> Self {
        let all: Vec<&RequestRecord> = records.into_iter().collect();
        let ok: Vec<&RequestRecord> = all.iter().copied().filter(|r| r.ok()).collect();
        let per_s = |n: f64| if duration > 0.0 { n / duration } else { 0.0 };
        let total_input_tokens = ok.iter().map(|r| r.prompt_tokens).sum();
        let total_output_tokens = ok.iter().map(|r| r.completion_tokens).sum();
        let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft()).collect();
        let tpots: Vec<f64> = ok.iter().filter_map(|r| r.tpot()).collect();
        let itls: Vec<f64> = ok.iter().flat_map(|r| r.chunk_times.windows(2).map(|w| w[1] - w[0])).collect();
        let e2els: Vec<f64> = ok.iter().map(|r| r.e2e).collect();
        let reported: Vec<&&RequestRecord> = ok.iter().filter(|r| r.cached_tokens.is_some()).collect();
        let reported_prompt: usize = reported.iter().map(|r| r.prompt_tokens).sum();
        let prefix_cache_hit_rate = (!reported.is_empty() && reported_prompt > 0).then(|| {
            reported.iter().map(|r| r.cached_tokens.unwrap_or(0)).sum::<usize>() as f64 / reported_prompt as f64
        });
        Self {
            duration,
            completed: ok.len(),
            failed: all.len() - ok.len(),
            first_error: all.iter().find_map(|r| r.error.clone()),
            stopped_early: ok.iter().filter(|r| r.completion_tokens < r.requested_tokens).count(),
            total_input_tokens,
            total_output_tokens,
            request_throughput: per_s(ok.len() as f64),
            request_goodput: slo.is_set().then(|| per_s(ok.iter().filter(|r| slo.met_by(r)).count() as f64)),
            output_throughput: per_s(total_output_tokens as f64),
            total_token_throughput: per_s((total_input_tokens + total_output_tokens) as f64),
            max_output_tokens_per_s: peak_tokens_per_second(&ok),
            max_concurrent_requests: max_concurrency(&all),
            ttft_ms: Distribution::of_seconds(&ttfts),
            tpot_ms: Distribution::of_seconds(&tpots),
            itl_ms: Distribution::of_seconds(&itls),
            e2el_ms: Distribution::of_seconds(&e2els),
            prefix_cache_hit_rate,
        }
    }
}

/// Tokens generated per one-second bin of the run, at its fullest. A request's `usage` count is spread
/// evenly over its chunks, so a server that sends several tokens per chunk is counted right.
fn peak_tokens_per_second(records: &[&RequestRecord]) -> f64 {
    let mut bins: Vec<f64> = Vec::new();
    for r in records.iter().filter(|r| !r.chunk_times.is_empty()) {
        let per_chunk = r.completion_tokens as f64 / r.chunk_times.len() as f64;
        for t in &r.chunk_times {
            let bin = (r.sent_at + t).max(0.0) as usize;
            if bins.len() <= bin {
                bins.resize(bin + 1, 0.0);
            }
            bins[bin] += per_chunk;
        }
    }
    bins.into_iter().fold(0.0, f64::max)
}

/// The most requests in flight at any instant.
fn max_concurrency(records: &[&RequestRecord]) -> usize {
    let mut edges: Vec<(f64, i32)> = records.iter().flat_map(|r| [(r.sent_at, 1), (r.sent_at + r.e2e, -1)]).collect();
    // Ends sort before starts at the same instant: back-to-back requests do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    peak as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sent_at: f64, chunks: &[f64], e2e: f64, tokens: usize) -> RequestRecord {
        RequestRecord {
            sent_at,
            chunk_times: chunks.to_vec(),
            e2e,
            prompt_tokens: 10,
            completion_tokens: tokens,
            requested_tokens: tokens,
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&xs, 50.0), 2.5);
        assert!((percentile(&xs, 90.0) - 3.7).abs() < 1e-12);
        assert!((percentile(&xs, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn distribution_reports_milliseconds() {
        let d = Distribution::of_seconds(&[0.001, 0.003]);
        assert!((d.mean - 2.0).abs() < 1e-9);
        assert!((d.std - 1.0).abs() < 1e-9);
        assert!((d.median - 2.0).abs() < 1e-9);
    }

    #[test]
    fn tpot_and_itl_follow_vllm() {
        // First chunk at 100 ms, then chunks at 150 and 250 ms; the response ends at 250 ms with 3 tokens.
        let r = record(0.0, &[0.1, 0.15, 0.25], 0.25, 3);
        assert!((r.ttft() - 0.1).abs() < 1e-12);
        assert!((r.tpot().unwrap() - 0.075).abs() < 1e-12);
        let s = Summary::from_records([&r], 1.0, &Slo::default());
        assert!((s.itl_ms.mean - 75.0).abs() < 1e-9);
        assert!((s.itl_ms.median - 75.0).abs() < 1e-9);
        assert!((s.tpot_ms.mean - 75.0).abs() < 1e-9);
        assert!((s.e2el_ms.mean - 250.0).abs() < 1e-9);
        assert_eq!(record(0.0, &[0.1], 0.1, 1).tpot(), None);
    }

    #[test]
    fn throughput_uses_usage_counts_and_wall_time() {
        // Two chunks carrying 8 tokens: usage, not the chunk count, is what counts.
        let a = record(0.0, &[0.5, 1.5], 2.0, 8);
        let b = record(1.0, &[0.2, 0.4], 1.0, 4);
        let s = Summary::from_records([&a, &b], 2.0, &Slo::default());
        assert_eq!(s.total_output_tokens, 12);
        assert_eq!(s.total_input_tokens, 20);
        assert!((s.output_throughput - 6.0).abs() < 1e-12);
        assert!((s.total_token_throughput - 16.0).abs() < 1e-12);
        assert!((s.request_throughput - 1.0).abs() < 1e-12);
        // Bin 0 gets a's first chunk (4 tokens); bin 1 gets a's second (4) and both of b's (2 + 2).
        assert!((s.max_output_tokens_per_s - 8.0).abs() < 1e-12);
        assert_eq!(s.max_concurrent_requests, 2);
        assert_eq!(s.request_goodput, None);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let fast = record(0.0, &[0.05, 0.07], 0.09, 3); // TTFT 50 ms, TPOT 20 ms
        let slow_start = record(0.0, &[0.5, 0.52], 0.54, 3); // TTFT 500 ms
        let slow_tokens = record(0.0, &[0.05, 0.2], 0.35, 3); // TPOT 150 ms
        let slo = Slo { ttft_ms: Some(100.0), tpot_ms: Some(50.0), e2el_ms: None };
        let s = Summary::from_records([&fast, &slow_start, &slow_tokens], 2.0, &slo);
        assert_eq!(s.request_goodput, Some(0.5));
    }

    #[test]
    fn failures_and_early_stops_are_counted_apart() {
        let mut failed = record(5.0, &[], 0.1, 0);
        failed.error = Some("boom".into());
        let mut short = record(0.0, &[0.1, 0.2], 0.2, 2);
        short.requested_tokens = 16;
        short.cached_tokens = Some(5);
        let s = Summary::from_records([&failed, &short], 1.0, &Slo::default());
        assert_eq!((s.completed, s.failed, s.stopped_early), (1, 1, 1));
        assert_eq!(s.first_error.as_deref(), Some("boom"));
        assert_eq!(s.prefix_cache_hit_rate, Some(0.5));
        assert_eq!(s.max_concurrent_requests, 1);
    }
}
