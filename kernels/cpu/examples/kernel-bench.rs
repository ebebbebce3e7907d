//! Times the kernels alone (no candle), so that they can be measured and profiled on any target the
//! crate builds for: `cargo run --release -p bodega-cpu-kernels --example kernel-bench -- Q4_1 576 1536
//! [PATH] [THREADS]` prints the best time per call for M = 1, 4, 16, 64 on every available path (or
//! PATH), with THREADS threads (default: one per physical core). Best of many short rounds, so that
//! it reads the kernels' own speed even on a machine that other work keeps busy.

use bodega_cpu_kernels::{KernelPath, QuantFormat, QuantMatrix};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let format = QuantFormat::ALL
        .into_iter()
        .find(|f| args.first().is_some_and(|a| a.eq_ignore_ascii_case(f.name())))
        .unwrap_or(QuantFormat::Q4_1);
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(576);
    let k: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1536);
    let only: Option<KernelPath> = args.get(3).and_then(|a| a.parse().ok());
    if let Some(threads) = args.get(4).and_then(|a| a.parse().ok()) {
        bodega_cpu_kernels::set_threads(threads).expect("threads set before the first matmul");
    }
    let blocks = n * k / format.block_len();
    // Arbitrary bytes make valid blocks for every format; keep the f16 scales small and finite.
    let mut bytes: Vec<u8> = (0..blocks * format.block_bytes()).map(|i| (i * 7919 % 251) as u8).collect();
    for b in bytes.chunks_exact_mut(format.block_bytes()) {
        let at = if format == QuantFormat::Q6K { 208 } else { 0 };
        b[at..at + 2].copy_from_slice(&0x2000u16.to_le_bytes());
    }
    let w = QuantMatrix::new(format, n, k, bytes).expect("matrix");
    println!("{format} {n}×{k}, {} threads", bodega_cpu_kernels::threads());
    for path in KernelPath::available().into_iter().filter(|p| only.is_none_or(|o| o == *p)) {
        let mut line = format!("{:>7}:", path.name());
        for m in [1, 4, 16, 64] {
            let x: Vec<f32> = (0..m * k).map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0).collect();
            let mut out = vec![0.0; m * n];
            let t = best(|| w.matmul_on(path, &x, m, &mut out).expect("matmul"));
            line += &format!("  M={m}: {:8.1} µs", t.as_secs_f64() * 1e6);
        }
        println!("{line}");
    }
}

/// Best time per call over twenty rounds of ~10 ms each.
fn best(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    f();
    let calls = (10_000_000 / start.elapsed().as_nanos().max(1000)).clamp(1, 100_000) as u32;
    (0..20)
        .map(|_| {
            let start = Instant::now();
            (0..calls).for_each(|_| f());
            start.elapsed() / calls
        })
        .min()
        .expect("twenty rounds")
}
