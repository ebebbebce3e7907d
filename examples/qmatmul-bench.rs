//! Quantized matmul microbenchmark: bodega's CPU kernels against candle's `QMatMul` on the same
//! weights, for the SmolLM2-135M shapes and M = 1, 4, 16, 64 activation rows. Prints the best time of
//! several repetitions and its ratio to M = 1: a kernel that batches keeps the ratio far below M.
//!
//! `cargo run --release --example qmatmul-bench [-- FORMAT...]` (formats: Q4_1 Q8_0 Q4_K Q6_K).
//! `BODEGA_CPU_KERNEL` picks our path. `QMATMUL_BENCH_THREADS` (default 1) sizes both engines' pools:
//! with one thread the times are the calling thread's CPU time (from /proc/thread-self/schedstat on
//! Linux), which other processes on a shared machine barely disturb; with more, wall-clock time.

use bodega_cpu_kernels::{KernelPath, QuantFormat, QuantMatrix};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::{Duration, Instant};

/// `(N, K)`: MLP down (576 × 1536), MLP gate/up (1536 × 576), tied LM head (49152 × 576). K-quants
/// need K to be a multiple of 256, so they run the first shape only.
const SHAPES: [(usize, usize); 3] = [(576, 1536), (1536, 576), (49152, 576)];
const BATCHES: [usize; 4] = [1, 4, 16, 64];

fn formats() -> Vec<(QuantFormat, GgmlDType)> {
    let all = [
        (QuantFormat::Q4_1, GgmlDType::Q4_1),
        (QuantFormat::Q8_0, GgmlDType::Q8_0),
        (QuantFormat::Q4K, GgmlDType::Q4K),
        (QuantFormat::Q6K, GgmlDType::Q6K),
    ];
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    all.into_iter()
        .filter(|(f, _)| wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(f.name())))
        .collect()
}

/// Nanoseconds this thread has run on a CPU (Linux), or `None` where the kernel does not say.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// A clock: the calling thread's CPU time when `cpu` (and available), else wall-clock time.
fn now(cpu: bool) -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    match thread_cpu_ns().filter(|_| cpu) {
        Some(ns) => Duration::from_nanos(ns),
        None => START.get_or_init(Instant::now).elapsed(),
    }
}

/// Best time per call over several rounds of enough calls to last ~40 ms.
fn best(cpu: bool, mut f: impl FnMut()) -> Duration {
    f();
    let start = now(cpu);
    f();
    let once = (now(cpu) - start).max(Duration::from_micros(1));
    let calls = (Duration::from_millis(40).as_nanos() / once.as_nanos()).clamp(1, 10_000) as u32;
    (0..5)
        .map(|_| {
            let start = now(cpu);
            for _ in 0..calls {
                f();
            }
            (now(cpu) - start) / calls
        })
        .min()
        .expect("five rounds")
}

fn main() -> anyhow::Result<()> {
    let threads: usize = std::env::var("QMATMUL_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    // Before either pool starts: candle sizes its work by rayon's variable.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    bodega_cpu_kernels::set_threads(threads)?;
    let cpu = threads == 1 && thread_cpu_ns().is_some();
    let path = KernelPath::detect()?;
    println!(
        "bodega kernels: {path}, {} threads; candle: {} rayon threads; times: {}",
        bodega_cpu_kernels::threads(),
        rayon::current_num_threads(),
        if cpu { "CPU time of the one thread" } else { "wall clock" }
    );
    println!("| format | N×K | M | candle µs | candle ×M=1 | bodega µs | bodega ×M=1 | candle / bodega |");
    println!("|---|---|---|---|---|---|---|---|");
    for (format, dtype) in formats() {
        for (n, k) in SHAPES.into_iter().filter(|&(_, k)| k % format.block_len() == 0) {
            let values: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1).collect();
            let weights = Tensor::from_vec(values, (n, k), &Device::Cpu)?;
            let q = QTensor::quantize(&weights, dtype)?;
            let ours = QuantMatrix::new(format, n, k, q.data()?.into_owned())?;
            let theirs = QMatMul::from_qtensor(q)?;
            let (mut candle_one, mut ours_one) = (0.0, 0.0);
            for m in BATCHES {
                let x: Vec<f32> = (0..m * k).map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0).collect();
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?;
                let mut out = vec![0.0; m * n];
                let candle = best(cpu, || drop(theirs.forward(&xt).expect("candle matmul"))).as_secs_f64() * 1e6;
                let bodega = best(cpu, || ours.matmul(&x, m, &mut out).expect("bodega matmul")).as_secs_f64() * 1e6;
                if m == 1 {
                    (candle_one, ours_one) = (candle, bodega);
                }
                println!(
                    "| {format} | {n}×{k} | {m} | {candle:.1} | {:.2} | {bodega:.1} | {:.2} | {:.2} |",
                    candle / candle_one,
                    bodega / ours_one,
                    candle / bodega
                );
            }
        }
    }
    Ok(())
}
