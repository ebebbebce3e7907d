//! Times the kernels alone (no candle), so that they can be measured and profiled on any target the
//! crate builds for: `cargo run --release -p bodega-cpu-kernels --example kernel-bench -- Q4_1 576 1536
//! [PATH] [THREADS]` prints the best time per call for M = 1, 4, 16, 64 on every available path (or
//! PATH), with THREADS threads (default: one per physical core). Best of many short rounds; with one
//! thread, of the thread's CPU time (Linux), which other processes on a shared machine barely disturb,
//! so that old and new kernels can be compared while other work keeps the machine busy.

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
    let cpu = bodega_cpu_kernels::threads() == 1 && thread_cpu_time().is_some();
    let blocks = n * k / format.block_len();
    // Arbitrary bytes make valid blocks for every format; keep the f16 scales small and finite.
    let mut bytes: Vec<u8> = (0..blocks * format.block_bytes()).map(|i| (i * 7919 % 251) as u8).collect();
    for b in bytes.chunks_exact_mut(format.block_bytes()) {
        let at = if format == QuantFormat::Q6K { 208 } else { 0 };
        b[at..at + 2].copy_from_slice(&0x2000u16.to_le_bytes());
    }
    let w = QuantMatrix::new(format, n, k, bytes).expect("matrix");
    let clock = if cpu { "CPU time of the thread" } else { "wall-clock time" };
    println!("{format} {n}×{k}, {} threads, {clock}", bodega_cpu_kernels::threads());
    for path in KernelPath::available().into_iter().filter(|p| only.is_none_or(|o| o == *p)) {
        let mut line = format!("{:>7}:", path.name());
        for m in [1, 4, 16, 64] {
            let x: Vec<f32> = (0..m * k).map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0).collect();
            let mut out = vec![0.0; m * n];
            let t = best(cpu, || w.matmul_on(path, &x, m, &mut out).expect("matmul"));
            line += &format!("  M={m}: {:8.1} µs", t.as_secs_f64() * 1e6);
        }
        println!("{line}");
    }
}

/// The calling thread's CPU time on Linux (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, precise to
/// the nanosecond; std links the C library that has it).
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        secs: i64,
        nanos: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, out: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { secs: 0, nanos: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let ok = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    ok.then(|| Duration::new(t.secs as u64, t.nanos as u32))
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// Best time per call over twenty rounds of ~10 ms each, by the thread's CPU time when `cpu`.
fn best(cpu: bool, mut f: impl FnMut()) -> Duration {
    let now = || thread_cpu_time().filter(|_| cpu);
    f();
    let start = Instant::now();
    f();
    let calls = (10_000_000 / start.elapsed().as_nanos().max(1000)).clamp(1, 100_000) as u32;
    (0..20)
        .map(|_| {
            let (cpu_start, start) = (now(), Instant::now());
            (0..calls).for_each(|_| f());
            match (cpu_start, now()) {
                (Some(a), Some(b)) => (b - a) / calls,
                _ => start.elapsed() / calls,
            }
        })
        .min()
        .expect("twenty rounds")
}
