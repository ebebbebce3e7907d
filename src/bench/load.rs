//! Offering requests to a target: closed loop (a fixed number in flight, each finished request
//! starting the next) or open loop (arrivals at a rate, with gamma-distributed gaps as vLLM draws them:
//! shape = burstiness, mean gap = 1 / rate), several classes at once for mixed scenarios.

use super::metrics::RequestRecord;
use super::plan::Load;
use super::target::Target;
use super::workload::Prompt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Called once per finished request (drives the progress bar).
pub type OnDone = Arc<dyn Fn() + Send + Sync>;

/// The prompts of one class and how to offer them.
pub struct ClassLoad {
    pub prompts: Arc<Vec<Prompt>>,
    pub load: Load,
}

/// Runs every class at once until all its prompts are answered (or `stop` is set); returns the
/// records, each tagged with its class and prompt, and the wall time.
pub async fn run(
    target: &Arc<Target>,
    classes: Vec<ClassLoad>,
    seed: u64,
    stop: &Arc<AtomicBool>,
    on_done: &OnDone,
) -> (Vec<RequestRecord>, f64) {
    let start = Instant::now();
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (class, c) in classes.into_iter().enumerate() {
        let ctx =
            Ctx { target: target.clone(), stop: stop.clone(), records: records.clone(), on_done: on_done.clone() };
        tasks.push(tokio::spawn(offer(ctx, class, c, start, seed.wrapping_add(class as u64))));
    }
    for task in tasks {
        let _ = task.await;
    }
    let duration = start.elapsed().as_secs_f64();
    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    (records, duration)
}

/// What every request task shares.
#[derive(Clone)]
struct Ctx {
    target: Arc<Target>,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<RequestRecord>>>,
    on_done: OnDone,
}

impl Ctx {
    async fn request(&self, class: usize, index: usize, prompt: &Prompt, start: Instant) {
        let sent_at = start.elapsed().as_secs_f64();
        let mut record = self.target.send(prompt, &self.stop).await;
        record.class = class;
        record.prompt_index = index;
        record.sent_at = sent_at;
        if let Ok(mut records) = self.records.lock() {
            records.push(record);
        }
        (self.on_done)();
    }
}

async fn offer(ctx: Ctx, class: usize, c: ClassLoad, start: Instant, seed: u64) {
    match c.load {
        Load::Closed { concurrency } => closed(ctx, class, c.prompts, concurrency, start).await,
        Load::Open { rate, burstiness, max_concurrency } => {
            let gaps = arrival_gaps(c.prompts.len(), rate, burstiness, seed);
            open(ctx, class, c.prompts, &gaps, max_concurrency, start).await
        }
    }
}

async fn closed(ctx: Ctx, class: usize, prompts: Arc<Vec<Prompt>>, concurrency: usize, start: Instant) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ctx, prompts, next) = (ctx.clone(), prompts.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= prompts.len() || ctx.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    ctx.request(class, i, &prompts[i], start).await;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

async fn open(
    ctx: Ctx,
    class: usize,
    prompts: Arc<Vec<Prompt>>,
    gaps: &[f64],
    max_concurrency: Option<usize>,
    start: Instant,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(max_concurrency.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS)));
    let mut at = 0.0;
    let mut tasks = Vec::new();
    for (i, gap) in gaps.iter().enumerate() {
        at += gap;
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let (ctx, prompts) = (ctx.clone(), prompts.clone());
        tasks.push(tokio::spawn(async move {
            ctx.request(class, i, &prompts[i], start).await;
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Seconds between arrivals: the first request goes at once, then gamma-distributed gaps with
/// mean `1 / rate` (exponential, a Poisson process, when `burstiness` is 1).
pub fn arrival_gaps(n: usize, rate: f64, burstiness: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gamma = Gamma::new(burstiness, 1.0 / (rate * burstiness)).expect("rate and burstiness are checked positive");
    (0..n).map(|i| if i == 0 { 0.0 } else { gamma.sample(&mut rng) }).collect()
}

#[cfg(test)]
mod tests {
    use super::arrival_gaps;

    #[test]
    fn arrivals_average_the_rate_and_burstiness_spreads_them() {
        let mean_and_var = |b: f64| {
            let gaps = arrival_gaps(20_001, 4.0, b, 7);
            let g = &gaps[1..];
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            (mean, g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / g.len() as f64)
        };
        let (poisson_mean, poisson_var) = mean_and_var(1.0);
        let (bursty_mean, bursty_var) = mean_and_var(0.25);
        assert!((poisson_mean - 0.25).abs() < 0.01, "{poisson_mean}");
        assert!((bursty_mean - 0.25).abs() < 0.02, "{bursty_mean}");
        // Gamma variance is mean² / shape: 0.0625 for Poisson, four times that at burstiness 0.25.
        assert!((poisson_var - 0.0625).abs() < 0.006, "{poisson_var}");
        assert!(bursty_var > 3.0 * poisson_var, "{bursty_var}");
        assert_eq!(arrival_gaps(3, 1.0, 1.0, 1)[0], 0.0);
    }
}
