//! Runs a [`Plan`] against one or two targets: warm-up, then every row × repetition with the targets
//! interleaved (A, B, A, B, ...) on identical prompts, engine metrics around each in-process run, and
//! `--check`'s one-at-a-time replay; or the single-stream depth protocol.

use super::load::{self, ClassLoad, OnDone};
use super::metrics::{RequestRecord, Summary};
use super::plan::{Load, Mode, Plan, RowPlan, WorkloadSpec};
use super::report::{CheckResult, ClassResult, DepthRun, Mismatch, RunResult};
use super::resources::Sampler;
use super::target::{Target, CANCELLED};
use super::workload::{self, Prompt};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Output tokens of a warm-up request: enough to run decode steps, short enough not to matter.
const WARMUP_OUTPUT_LEN: usize = 16;
/// Mixed into seeds so that warm-up prompts never equal measured ones (no prefix-cache head start).
const WARMUP_SALT: u64 = 0x5741_524d;
/// Mixed into single-stream seeds so that they never replay a load run's prompts (a server keeps
/// its prefix cache between benchmarks).
const DEPTH_SALT: u64 = 0x4445_5054;

/// A benchmark ready to run.
pub struct Bench {
    pub plan: Plan,
    /// `(label, target)`: A first, then B for `--vs`.
    pub targets: Vec<(String, Arc<Target>)>,
    pub tokenizer: Arc<Tokenizer>,
    /// Replay each row's prompts one at a time and compare the greedy outputs.
    pub check: bool,
    /// The machine's peak bandwidth in GB/s, for the in-process decode bandwidth percentage.
    pub peak_bandwidth_gb_s: Option<f64>,
}

/// What a benchmark produced (all of it, or what finished before Ctrl-C).
#[derive(Debug, Default)]
pub struct Outcome {
    pub runs: Vec<RunResult>,
    pub single_stream: Vec<DepthRun>,
    pub interrupted: bool,
}

impl Bench {
    /// Requests the whole benchmark will send (for the progress bar).
    pub fn total_requests(&self) -> u64 {
        let targets = self.targets.len() as u64;
        let per_target: u64 = match &self.plan.mode {
            Mode::Load { rows } => {
                let prompts: u64 = rows.iter().flat_map(|r| &r.classes).map(|c| c.num_prompts as u64).sum();
                prompts * self.plan.repeat as u64 * if self.check { 2 } else { 1 }
            }
            Mode::SingleStream { depths, .. } => {
                depths.iter().map(|&d| if d > 0 { 3 } else { 2 }).sum::<u64>() * self.plan.repeat as u64
            }
        };
        targets * (per_target + self.plan.warmup as u64)
    }

    /// Runs everything; `on_done` is called per finished request; `on_run` per finished run.
    pub async fn run(
        &self,
        stop: &Arc<AtomicBool>,
        on_done: &OnDone,
        on_run: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        for (label, target) in &self.targets {
            self.warm_up(target, stop, on_done).await?;
            on_run(&format!("{label}: warm-up done"));
        }
        match &self.plan.mode {
            Mode::Load { rows } => {
                for (r, row) in rows.iter().enumerate() {
                    for repeat in 0..self.plan.repeat {
                        let prompts = self.row_prompts(row, seed_of(self.plan.seed, r, repeat))?;
                        for (label, target) in &self.targets {
                            if stop.load(Ordering::Relaxed) {
                                outcome.interrupted = true;
                                return Ok(outcome);
                            }
                            let run = self.run_row(label, target, row, repeat, &prompts, stop, on_done).await;
                            on_run(&format!(
                                "{label} {}: {} requests",
                                row.label,
                                run.classes.iter().map(|c| c.summary.completed).sum::<usize>()
                            ));
                            outcome.runs.push(run);
                        }
                    }
                }
            }
            Mode::SingleStream { depths, workload } => {
                for &depth in depths {
                    for repeat in 0..self.plan.repeat {
                        for (label, target) in &self.targets {
                            if stop.load(Ordering::Relaxed) {
                                outcome.interrupted = true;
                                return Ok(outcome);
                            }
                            let seed = seed_of(self.plan.seed ^ DEPTH_SALT, depth, repeat);
                            let run =
                                match self.depth_run(label, target, workload, depth, repeat, seed, stop, on_done).await
                                {
                                    Ok(run) => run,
                                    Err(_) if stop.load(Ordering::Relaxed) => {
                                        outcome.interrupted = true;
                                        return Ok(outcome);
                                    }
                                    Err(e) => return Err(e),
                                };
                            on_run(&format!(
                                "{label} depth {depth}: pp {:.1} tok/s, tg {:.1} tok/s",
                                run.prefill_tok_s, run.decode_tok_s
                            ));
                            outcome.single_stream.push(run);
                        }
                    }
                }
            }
        }
        outcome.interrupted = stop.load(Ordering::Relaxed);
        Ok(outcome)
    }

    async fn warm_up(&self, target: &Arc<Target>, stop: &Arc<AtomicBool>, on_done: &OnDone) -> Result<()> {
        if self.plan.warmup == 0 {
            return Ok(());
        }
        target.prepare()?;
        // The first workload's prompt length and sampling: the warm-up runs the same kernels.
        let first = match &self.plan.mode {
            Mode::Load { rows } => &rows[0].classes[0].workload,
            Mode::SingleStream { workload, .. } => workload,
        };
        let spec = WorkloadSpec {
            input_len: first.input_len,
            output_len: WARMUP_OUTPUT_LEN,
            range_ratio: 0.0,
            prefix_len: 0,
            dataset: None,
            temperature: first.temperature,
        };
        let prompts =
            Arc::new(workload::build(&spec, self.plan.warmup, &self.tokenizer, self.plan.seed ^ WARMUP_SALT)?);
        let classes = vec![ClassLoad { prompts, load: Load::Closed { concurrency: self.plan.warmup } }];
        let (records, _) = load::run(target, classes, 0, stop, on_done).await;
        match records.iter().find_map(|r| r.error.as_ref()) {
            Some(e) if !stop.load(Ordering::Relaxed) => Err(Error::Bench(format!("the warm-up request failed: {e}"))),
            _ => Ok(()),
        }
    }

    fn row_prompts(&self, row: &RowPlan, seed: u64) -> Result<Vec<Arc<Vec<Prompt>>>> {
        row.classes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(Arc::new(workload::build(&c.workload, c.num_prompts, &self.tokenizer, seed.wrapping_add(i as u64))?))
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_row(
        &self,
        label: &str,
        target: &Arc<Target>,
        row: &RowPlan,
        repeat: usize,
        prompts: &[Arc<Vec<Prompt>>],
        stop: &Arc<AtomicBool>,
        on_done: &OnDone,
    ) -> RunResult {
        let classes: Vec<ClassLoad> =
            row.classes.iter().zip(prompts).map(|(c, p)| ClassLoad { prompts: p.clone(), load: c.load }).collect();
        // Only a stopped engine fails here, and then every request of the run fails and is reported.
        let _ = target.prepare();
        let sampler = target.engine().map(|engine| Sampler::start(engine.clone()));
        let seed = self.plan.seed.wrapping_add(repeat as u64);
        let (mut records, duration) = load::run(target, classes, seed, stop, on_done).await;
        if stop.load(Ordering::Relaxed) {
            // Requests cut short by Ctrl-C did not fail; they are left out rather than counted.
            records.retain(|r| r.error.as_deref() != Some(CANCELLED));
        }
        let engine = sampler.zip(target.engine()).map(|(s, e)| s.finish(e, self.peak_bandwidth_gb_s));
        let results = row
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| ClassResult {
                name: c.name.clone(),
                summary: Summary::from_records(records.iter().filter(|r| r.class == i), duration, &self.plan.slo),
            })
            .collect();
        let check = match self.check && !stop.load(Ordering::Relaxed) {
            true => Some(self.check_row(target, row, prompts, &records, stop, on_done).await),
            false => None,
        };
        RunResult { target: label.into(), row: row.label.clone(), repeat, classes: results, engine, check }
    }

    /// Replays every prompt of the row alone and compares the greedy texts with the loaded run's.
    async fn check_row(
        &self,
        target: &Arc<Target>,
        row: &RowPlan,
        prompts: &[Arc<Vec<Prompt>>],
        loaded: &[RequestRecord],
        stop: &Arc<AtomicBool>,
        on_done: &OnDone,
    ) -> CheckResult {
        let classes = prompts.iter().map(|p| ClassLoad { prompts: p.clone(), load: Load::Closed { concurrency: 1 } });
        let mut result = CheckResult::default();
        for (class, one) in classes.enumerate() {
            let (alone, _) = load::run(target, vec![one], 0, stop, on_done).await;
            for a in alone.iter().filter(|r| r.error.is_none()) {
                let Some(l) =
                    loaded.iter().find(|l| l.class == class && l.prompt_index == a.prompt_index && l.error.is_none())
                else {
                    continue;
                };
                result.compared += 1;
                if l.text != a.text {
                    let at = l.text.bytes().zip(a.text.bytes()).take_while(|(x, y)| x == y).count();
                    result.mismatches.push(Mismatch {
                        class: row.classes[class].name.clone(),
                        prompt_index: a.prompt_index,
                        first_difference_at: at,
                    });
                }
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn depth_run(
        &self,
        label: &str,
        target: &Arc<Target>,
        spec: &WorkloadSpec,
        depth: usize,
        repeat: usize,
        seed: u64,
        stop: &Arc<AtomicBool>,
        on_done: &OnDone,
    ) -> Result<DepthRun> {
        target.prepare()?;
        let depth_seed = seed_of(self.plan.seed ^ DEPTH_SALT, depth, usize::MAX);
        let prompts = workload::depth_prompts(&self.tokenizer, depth, spec, depth_seed, seed)?;
        let one =
            |p: &Prompt| vec![ClassLoad { prompts: Arc::new(vec![p.clone()]), load: Load::Closed { concurrency: 1 } }];
        let context_tokens = match &prompts.warm {
            Some(warm) => {
                let (r, _) = load::run(target, one(warm), 0, stop, on_done).await;
                single(r)?.prompt_tokens
            }
            None => 0,
        };
        let (r, _) = load::run(target, one(&prompts.prefill), 0, stop, on_done).await;
        let prefill = single(r)?;
        // Targets that do not report cached tokens are assumed to have reused the depth's context.
        let cached = prefill.cached_tokens.unwrap_or(context_tokens.saturating_sub(1));
        let pp_tokens = prefill.prompt_tokens.saturating_sub(cached);
        let (r, _) = load::run(target, one(&prompts.decode), 0, stop, on_done).await;
        let decode = single(r)?;
        let decode_time = decode.e2e - decode.ttft();
        Ok(DepthRun {
            target: label.into(),
            depth,
            repeat,
            pp_tokens,
            prefill_tok_s: pp_tokens as f64 / prefill.ttft().max(1e-9),
            tg_tokens: decode.completion_tokens,
            decode_tok_s: decode.completion_tokens.saturating_sub(1) as f64 / decode_time.max(1e-9),
        })
    }
}

/// The one record of a one-request run, or its error.
fn single(records: Vec<RequestRecord>) -> Result<RequestRecord> {
    let record = records.into_iter().next().ok_or_else(|| Error::Bench("the request was not sent".into()))?;
    match &record.error {
        Some(e) => Err(Error::Bench(format!("a single-stream request failed: {e}"))),
        None => Ok(record),
    }
}

/// A seed per (benchmark seed, row, repetition): identical for every target, fresh for every run.
fn seed_of(seed: u64, row: usize, repeat: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((row as u64) << 32) ^ repeat as u64
}
