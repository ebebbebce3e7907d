//! The paged attention of one query row, on every path this CPU runs (NEON under qemu in CI),
//! against an f64 reference over the same keys gathered densely.

mod support;

use bodega_cpu_kernels::{attend, KernelPath, PagedRows};
use support::Rng;

/// A scattered cache: `blocks` blocks of `block_size` slots of `kv_heads` rows of `d` values.
struct Cache {
    k: Vec<f32>,
    v: Vec<f32>,
    table: Vec<u32>,
    block_size: usize,
    kv_heads: usize,
    d: usize,
}

impl Cache {
    fn new(rng: &mut Rng, positions: usize, block_size: usize, kv_heads: usize, d: usize) -> Self {
        let blocks = positions.div_ceil(block_size);
        let len = (blocks + 3) * block_size * kv_heads * d;
        // Blocks out of order and not from 0, as a busy pool hands them out.
        let table = (0..blocks as u32).map(|b| (b * 7 + 3) % (blocks as u32 + 3)).collect();
        Self { k: rng.values(len), v: rng.values(len), table, block_size, kv_heads, d }
    }

    fn rows(&self, kv_head: usize, first: usize, end: usize) -> PagedRows<'_> {
        PagedRows {
            table: &self.table,
            block_size: self.block_size,
            slot_stride: self.kv_heads * self.d,
            head_offset: kv_head * self.d,
            first,
            end,
        }
    }

    /// Start of position `pos`'s row for `kv_head`.
    fn at(&self, pos: usize, kv_head: usize) -> usize {
        let slot = self.table[pos / self.block_size] as usize * self.block_size + pos % self.block_size;
        (slot * self.kv_heads + kv_head) * self.d
    }
}

/// Softmax-weighted values in f64, one head at a time.
fn reference(q: &[f32], scale: f32, cache: &Cache, kv_head: usize, first: usize, end: usize) -> Vec<f32> {
    let d = cache.d;
    q.chunks_exact(d)
        .flat_map(|qh| {
            let scores: Vec<f64> = (first..end)
                .map(|p| {
                    let key = &cache.k[cache.at(p, kv_head)..][..d];
                    qh.iter().zip(key).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            (0..d)
                .map(|x| {
                    let acc: f64 =
                        (first..end).zip(&weights).map(|(p, w)| w * cache.v[cache.at(p, kv_head) + x] as f64).sum();
                    (acc / total) as f32
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_path_matches_the_f64_reference() {
    let mut rng = Rng::new(7);
    let paths = KernelPath::available();
    // Head dims: multiples of 16 and of 8 only (the SIMD bodies' two tails), and 12 (scalar only);
    // query heads per KV head from 1 to 8 (more than the four handled per pass); windows.
    for (d, heads, positions, block_size, window) in [
        (64, 3, 100, 16, 0),
        (64, 8, 257, 16, 0),
        (128, 1, 33, 16, 0),
        (256, 4, 70, 32, 0),
        (72, 5, 50, 8, 0),
        (40, 2, 17, 16, 5),
        (12, 3, 29, 4, 0),
        (64, 6, 300, 16, 64),
    ] {
        let kv_heads = 2;
        let cache = Cache::new(&mut rng, positions, block_size, kv_heads, d);
        let scale = (d as f32).powf(-0.5);
        for end in [1, positions / 2 + 1, positions] {
            let first = if window == 0 { 0 } else { end.saturating_sub(window) };
            let q: Vec<f32> = rng.values(heads * d).iter().map(|v| v * 3.0).collect();
            let expected = reference(&q, scale, &cache, 1, first, end);
            for &path in &paths {
                let mut out = vec![f32::NAN; q.len()];
                attend(path, &q, scale, (&cache.k, &cache.v), &cache.rows(1, first, end), d, &mut out);
                let err = out.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(
                    err < 2e-5,
                    "{path:?}: d {d}, {heads} heads, keys {first}..{end}, window {window}: max error {err}"
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "outside the cache")]
fn a_block_table_outside_the_cache_is_refused() {
    let mut rng = Rng::new(3);
    let mut cache = Cache::new(&mut rng, 40, 16, 1, 64);
    cache.table[1] = 1000;
    let q = rng.values(64);
    let mut out = vec![0.0; 64];
    attend(KernelPath::Scalar, &q, 0.125, (&cache.k, &cache.v), &cache.rows(0, 0, 40), 64, &mut out);
}

#[test]
fn a_head_gives_the_same_bits_alone_or_with_its_group() {
    let mut rng = Rng::new(11);
    let (d, heads) = (64, 6);
    let cache = Cache::new(&mut rng, 90, 16, 2, d);
    let q = rng.values(heads * d);
    for path in KernelPath::available() {
        let mut together = vec![0.0; q.len()];
        attend(path, &q, 0.125, (&cache.k, &cache.v), &cache.rows(0, 0, 90), d, &mut together);
        for h in 0..heads {
            let mut alone = vec![0.0; d];
            attend(path, &q[h * d..(h + 1) * d], 0.125, (&cache.k, &cache.v), &cache.rows(0, 0, 90), d, &mut alone);
            let same = alone.iter().zip(&together[h * d..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{path:?}: head {h} differs alone and in its group");
        }
    }
}
