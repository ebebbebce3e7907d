//! A persistent thread pool for the matmuls: the caller plus `threads - 1` workers, started once.
//!
//! Why not rayon: the crate is dependency-free, and the ops are short (20-70 µs for a decode step's
//! projections), so wake-up latency matters more than work stealing. Workers spin for a short while
//! after each job, catching the next matmul of the step (usually microseconds away) without a
//! syscall, then park on a condition variable so that idle workers leave the cores to the rest of the
//! engine. Each thread runs the job once with its index; the matmul hands out its work through a
//! shared counter, and the job closes when the caller has run out of work, so a worker that the OS
//! does not schedule in time (another process holds the core) skips the job and delays nobody: the
//! caller waits only for workers that are running part of it.

use crate::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks. A decode step's matmuls follow each other within
/// tens of microseconds; longer gaps (attention, sampling) park the workers.
const SPIN: Duration = Duration::from_micros(50);

/// Threads asked for before the pool started (0: one per physical core).
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of threads the matmuls use (the caller's included). Must come before the first
/// matmul; the engine calls it with `--threads`.
pub fn set_threads(n: usize) -> Result<(), Error> {
    REQUESTED.store(n.max(1), Ordering::SeqCst);
    match POOL.get() {
        Some(pool) if pool.threads != n.max(1) => Err(Error::PoolStarted),
        _ => Ok(()),
    }
}

/// The number of threads the matmuls use (starting the pool if it has not started).
pub fn threads() -> usize {
    pool().threads
}

/// Runs `task(i)` once for every `i` in `0..tasks` on the pool's threads (the caller's included) and
/// returns when all are done; tasks are handed out one at a time. For the engine's other per-step
/// loops (attention): one set of threads serves every op of a step, instead of two pools spinning
/// against each other on the same cores.
pub fn parallel_for(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    let next = AtomicUsize::new(0);
    pool.run(pool.threads.min(tasks), &|_| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            break;
        }
        task(i);
    });
}

pub(crate) fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = match REQUESTED.load(Ordering::SeqCst) {
            0 => physical_cores(),
            n => n,
        };
        Pool::new(n)
    })
}

/// Physical cores available to this process: logical CPUs, less SMT siblings where Linux says which
/// CPUs share a core.
fn physical_cores() -> usize {
    let logical = thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for entry in dir.flatten() {
            let siblings = entry.path().join("topology/thread_siblings_list");
            if let Ok(list) = std::fs::read_to_string(siblings) {
                cores.insert(list.trim().to_string());
            }
        }
    }
    match cores.len() {
        0 => logical,
        physical => physical.min(logical),
    }
}

/// The high bit of `Shared::joined`: no job is open to join.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// A job: called once per chunk index. The lifetime is erased while the job is published; `run`
/// does not return before every worker has finished with it.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped to publish a job.
    epoch: AtomicUsize,
    job: Mutex<Option<SendJob>>,
    /// Workers inside the current job, plus [`CLOSED`] once the caller has finished its share.
    joined: AtomicUsize,
    panicked: AtomicBool,
    /// Workers parked (changed under `sleep`).
    sleeping: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob {
    job: Job,
    chunks: usize,
}
// SAFETY: the pointee is `Sync`, and `Pool::run` keeps it alive until every worker is done with it.
unsafe impl Send for SendJob {}

pub(crate) struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    /// Held while a job is out: one job at a time; callers that find it taken run inline.
    busy: Mutex<()>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            joined: AtomicUsize::new(CLOSED),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        for index in 1..threads {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("bodega-kernel-{index}"))
                .spawn(move || worker(&shared, index))
                .expect("spawning a kernel worker thread");
        }
        Self { threads, shared, busy: Mutex::new(()) }
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(0)` on the caller and `job(i)` on the workers `1..chunks` (`chunks` ≤ `threads`) that
    /// join before the caller's call returns; a worker that comes later skips the job. So `job` must
    /// hand out its work itself, from a shared counter (the matmul and [`parallel_for`] do), and
    /// the caller never waits for a worker that the OS has not scheduled. Runs `job(0)` alone when
    /// the pool is busy (another caller, or a call from inside a job), so it never deadlocks.
    pub(crate) fn run(&self, chunks: usize, job: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return job(0),
        };
        if chunks <= 1 {
            return job(0);
        }
        assert!(chunks <= self.threads, "{chunks} chunks for {} threads", self.threads);
        let shared = &self.shared;
        // SAFETY (lifetime erasure): we wait below until no worker runs the job any more.
        let erased = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        *shared.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(SendJob { job: erased, chunks });
        shared.joined.fetch_and(!CLOSED, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleeping.load(Ordering::SeqCst) > 0 {
            let _lock = shared.sleep.lock().unwrap_or_else(|p| p.into_inner());
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        // Workers that have not joined by now find the job closed; wait for those that did.
        shared.joined.fetch_or(CLOSED, Ordering::SeqCst);
        let mut spins = 0u32;
        while shared.joined.load(Ordering::Acquire) & !CLOSED != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        *shared.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(guard);
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a CPU kernel worker panicked");
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        seen = wait_for_job(shared, seen);
        if shared.joined.fetch_add(1, Ordering::SeqCst) & CLOSED == 0 {
            // Joined while open: the job in the slot is the open one, published before it opened.
            let job = shared.job.lock().unwrap_or_else(|p| p.into_inner()).expect("a published job");
            // SAFETY: the publisher keeps the job alive until no joined worker is left.
            if index < job.chunks && catch_unwind(AssertUnwindSafe(|| unsafe { (*job.job)(index) })).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.joined.fetch_sub(1, Ordering::Release);
    }
}

/// Spins, then parks, until the epoch moves past `seen`; returns the new epoch.
fn wait_for_job(shared: &Shared, seen: usize) -> usize {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch != seen {
            return epoch;
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(256) && start.elapsed() > SPIN {
            break;
        }
    }
    let mut lock = shared.sleep.lock().unwrap_or_else(|p| p.into_inner());
    shared.sleeping.fetch_add(1, Ordering::SeqCst);
    loop {
        let epoch = shared.epoch.load(Ordering::SeqCst);
        if epoch != seen {
            shared.sleeping.fetch_sub(1, Ordering::SeqCst);
            return epoch;
        }
        lock = shared.wake.wait(lock).unwrap_or_else(|p| p.into_inner());
    }
}
