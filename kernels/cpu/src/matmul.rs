//! The matmul driver: quantize the activations once, split the packed groups of 8 weight rows into
//! equal chunks that the pool's threads take in turn, and run each group against every MR-row slice
//! of the activations (the group's records stay in L1 while the activations stream from L2).

use crate::acts::{Acts256, Acts32};
use crate::format::Family;
use crate::kernel::{KernelPath, TileOut};
use crate::packed::{Group, Packed, LANES};
use crate::pool::pool;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Multiply-adds below which a matmul stays on the calling thread: waking a worker costs more.
const PARALLEL_MIN_WORK: usize = 1 << 16;
/// Chunks of weight rows per thread, taken from a shared counter: when another process holds a core
/// (two cores shared with a build, say), the threads that run take over the chunks of the one that
/// does not, instead of waiting for it.
const CHUNKS_PER_THREAD: usize = 4;

/// `out = x · Wᵀ` for the `rows` × `cols` matrix `w` and `m` activation rows.
pub(crate) fn run(w: &Packed, (rows, cols): (usize, usize), path: KernelPath, x: &[f32], m: usize, out: &mut [f32]) {
    if m == 0 {
        return;
    }
    let dims = Dims { m, n: rows, k: cols };
    match w.family() {
        Family::Blocks32 => {
            let acts = Acts32::quantize(x, m, cols);
            groups(w, dims, path, out, &|g, m0, mr| path.tile32(g, &acts, m0, mr));
        }
        Family::Super256 => {
            let acts = Acts256::quantize(x, m, cols);
            groups(w, dims, path, out, &|g, m0, mr| path.tile256(g, &acts, m0, mr));
        }
    }
}

#[derive(Clone, Copy)]
struct Dims {
    m: usize,
    n: usize,
    k: usize,
}

/// The output, written by several threads at disjoint (row, column) positions.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each group writes only the columns of its own weight rows, and each group is taken once.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// SAFETY: `i` is inside the output and written by this group only.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

fn groups(
    w: &Packed,
    Dims { m, n, k }: Dims,
    path: KernelPath,
    out: &mut [f32],
    kernel: &(dyn Fn(Group, usize, usize) -> TileOut + Sync),
) {
    let mr = path.tile_rows();
    let n_groups = n.div_ceil(LANES);
    let pool = pool();
    let threads = match m * n * k < PARALLEL_MIN_WORK {
        true => 1,
        false => pool.threads().min(n_groups),
    };
    let chunks = (threads * CHUNKS_PER_THREAD).min(n_groups);
    let next = AtomicUsize::new(0);
    let dst = OutPtr(out.as_mut_ptr());
    pool.run(threads, &|_| {
        let taken = std::iter::from_fn(|| Some(next.fetch_add(1, Ordering::Relaxed)).filter(|&c| c < chunks))
            .flat_map(|chunk| chunk * n_groups / chunks..(chunk + 1) * n_groups / chunks);
        for g in taken {
            let n0 = g * LANES;
            // A short last group repeats the last row; those results are dropped.
            let cols = LANES.min(n - n0);
            for m0 in (0..m).step_by(mr) {
                let result = kernel(w.group(g), m0, mr.min(m - m0));
                for (i, result) in result.iter().enumerate().take(mr.min(m - m0)) {
                    let row = (m0 + i) * n + n0;
                    for (j, &v) in result.iter().enumerate().take(cols) {
                        // SAFETY: (m0 + i, n0 + j) is inside `out` and belongs to this group only.
                        unsafe { dst.write(row + j, v) };
                    }
                }
            }
        }
    });
}
