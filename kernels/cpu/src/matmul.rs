//! The matmul driver: quantize the activations once, split the weight rows into equal chunks of whole
//! tiles that the pool's threads take in turn, and in each tile unpack NR weight rows once and run
//! them against every MR-row slice of the activations (the weights stay in L1 while the activations
//! stream from L2).

use crate::acts::{Acts256, Acts32};
use crate::format::Family;
use crate::kernel::{KernelPath, TileOut};
use crate::pool::pool;
use crate::unpack::{Rows256, Rows32, Unpacked};
use crate::QuantMatrix;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Multiply-adds below which a matmul stays on the calling thread: waking a worker costs more.
const PARALLEL_MIN_WORK: usize = 1 << 16;
/// Chunks of weight rows per thread, taken from a shared counter: when another process holds a core
/// (two cores shared with a build, say), the threads that run take over the chunks of the one that
/// does not, instead of waiting for it.
const CHUNKS_PER_THREAD: usize = 4;

pub(crate) fn run(matrix: &QuantMatrix, path: KernelPath, x: &[f32], m: usize, out: &mut [f32]) {
    if m == 0 {
        return;
    }
    let k = matrix.cols();
    match matrix.format().family() {
        Family::Blocks32 => {
            let acts = Acts32::quantize(x, m, k);
            tiles::<Rows32>(matrix, path, m, out, &|w, m0, mr| path.tile32(w, &acts, m0, mr));
        }
        Family::Super256 => {
            let acts = Acts256::quantize(x, m, k);
            tiles::<Rows256>(matrix, path, m, out, &|w, m0, mr| path.tile256(w, &acts, m0, mr));
        }
    }
}

/// The output, written by several threads at disjoint (row, column) positions.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each tile writes only the columns of its own weight rows, and each tile is taken once.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// SAFETY: `i` is inside the output and written by this tile only.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

fn tiles<U: Unpacked>(
    matrix: &QuantMatrix,
    path: KernelPath,
    m: usize,
    out: &mut [f32],
    kernel: &(dyn Fn(&U, usize, usize) -> TileOut + Sync),
) {
    let (n, k) = (matrix.rows(), matrix.cols());
    let (nr, mr) = path.tile_shape();
    let n_tiles = n.div_ceil(nr);
    let pool = pool();
    let threads = match m * n * k < PARALLEL_MIN_WORK {
        true => 1,
        false => pool.threads().min(n_tiles),
    };
    let chunks = (threads * CHUNKS_PER_THREAD).min(n_tiles);
    let next = AtomicUsize::new(0);
    // With a single tile of activation rows, unpacking codes costs more than it saves.
    let direct = m <= mr && path.decodes_blocks();
    let dst = OutPtr(out.as_mut_ptr());
    pool.run(threads, &|_| {
        let mut rows = U::new(nr, k);
        let tiles = std::iter::from_fn(|| Some(next.fetch_add(1, Ordering::Relaxed)).filter(|&c| c < chunks))
            .flat_map(|chunk| chunk * n_tiles / chunks..(chunk + 1) * n_tiles / chunks);
        for tile in tiles {
            let n0 = tile * nr;
            // A short last tile repeats its last row; those results are dropped.
            for slot in 0..nr {
                let bytes = matrix.row_bytes((n0 + slot).min(n - 1));
                if !(direct && rows.load_direct(slot, matrix.format(), bytes)) {
                    rows.load(slot, matrix.format(), bytes);
                }
            }
            let cols = nr.min(n - n0);
            for m0 in (0..m).step_by(mr) {
                let result = kernel(&rows, m0, mr.min(m - m0));
                for (i, result) in result.iter().enumerate().take(mr.min(m - m0)) {
                    let row = (m0 + i) * n + n0;
                    for (j, &v) in result.iter().enumerate().take(cols) {
                        // SAFETY: (m0 + i, n0 + j) is inside `out` and belongs to this tile only.
                        unsafe { dst.write(row + j, v) };
                    }
                }
            }
        }
    });
}
