//! f32 attention of one query row over paged keys and values, for the query heads that share one
//! KV head (grouped-query attention): each key and value row is read once for all of them.
//!
//! Two passes over the keys: scores (dot products, eight lanes with two accumulators per head),
//! then softmax, then the weighted sum of the values with the output held in registers, one column
//! chunk at a time. The body is generic over an eight-lane vector ([`Lanes`]), so that every path
//! runs the same algorithm in the same order: scalar (the readable reference), AVX2 + FMA (also used
//! on AVX-512 machines: eight lanes suffice for head dimensions of 64–256) and NEON. Head dimensions
//! that are not a multiple of 8 take the scalar path.
//!
//! Batch invariance: a row's result depends only on its own query, keys and values and the path.

use crate::KernelPath;
use std::cell::RefCell;

/// Calls `$body` with `$g` as a const generic 1..=4.
macro_rules! with_heads {
    ($g:expr, |$G:ident| $body:expr) => {
        match $g {
            1 => {
                const $G: usize = 1;
                $body
            }
            2 => {
                const $G: usize = 2;
                $body
            }
            3 => {
                const $G: usize = 3;
                $body
            }
            _ => {
                const $G: usize = 4;
                $body
            }
        }
    };
}

/// The keys (and values) one query row sees: positions `first..end` of a sequence whose cache
/// slots are given by its block table.
#[derive(Debug, Clone, Copy)]
pub struct PagedRows<'a> {
    /// The sequence's physical blocks, in position order.
    pub table: &'a [u32],
    /// Slots per block.
    pub block_size: usize,
    /// Elements from one slot to the next (`num_kv_heads * head_dim`).
    pub slot_stride: usize,
    /// Elements from a slot's start to this KV head's row (`kv_head * head_dim`).
    pub head_offset: usize,
    /// First position attended (a sliding window starts later than 0).
    pub first: usize,
    /// One past the last position attended (the query's own position + 1).
    pub end: usize,
}

impl PagedRows<'_> {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.end - self.first
    }

    /// Whether no key is attended (never the case for a causal query, which sees itself).
    pub fn is_empty(&self) -> bool {
        self.end <= self.first
    }

    /// Calls `f(j, start)` for every key in position order: `j` counts from 0, `start` is the
    /// element offset of its row in the cache.
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let mut pos = self.first;
        while pos < self.end {
            let block = pos / self.block_size;
            let block_end = ((block + 1) * self.block_size).min(self.end);
            let slot = self.table[block] as usize * self.block_size + pos % self.block_size;
            let mut start = slot * self.slot_stride + self.head_offset;
            for j in pos - self.first..block_end - self.first {
                f(j, start);
                start += self.slot_stride;
            }
            pos = block_end;
        }
    }

    /// The highest element offset any row ends at, for the bounds check done once per call.
    fn max_end(&self, head_dim: usize) -> usize {
        let blocks = self.end.div_ceil(self.block_size);
        let last_slot = self.table[..blocks].iter().map(|&b| (b as usize + 1) * self.block_size).max().unwrap_or(0);
        last_slot * self.slot_stride - self.slot_stride + self.head_offset + head_dim
    }
}

/// Query heads handled per pass over the keys (their accumulators stay in registers).
const MAX_HEADS: usize = 4;

/// Attention output of `heads = q.len() / head_dim` query heads, `q` and `out` `[heads, head_dim]`
/// (row-major), over the keys and values `rows` selects from `k_cache` and `v_cache`; the dot
/// products are multiplied by `scale`.
///
/// # Panics
/// If the slices are shorter than the shapes say (a caller bug, checked once per call).
pub fn attend(
    path: KernelPath,
    q: &[f32],
    scale: f32,
    (k_cache, v_cache): (&[f32], &[f32]),
    rows: &PagedRows,
    head_dim: usize,
    out: &mut [f32],
) {
    assert!(head_dim > 0 && q.len().is_multiple_of(head_dim) && out.len() == q.len(), "attention: bad query shape");
    assert!(!rows.is_empty(), "attention: no keys");
    let end = rows.max_end(head_dim);
    assert!(end <= k_cache.len() && end <= v_cache.len(), "attention: block table outside the cache");
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut h0 = 0;
        let heads = q.len() / head_dim;
        while h0 < heads {
            let g = (heads - h0).min(MAX_HEADS);
            let span = h0 * head_dim..(h0 + g) * head_dim;
            scratch.clear();
            scratch.resize(g * head_dim + g * rows.len(), 0.0);
            let (qs, scores) = scratch.split_at_mut(g * head_dim);
            qs.iter_mut().zip(&q[span.clone()]).for_each(|(s, x)| *s = x * scale);
            let job = Job { qs, k: k_cache, v: v_cache, rows, d: head_dim, scores, out: &mut out[span] };
            if head_dim.is_multiple_of(LANES) {
                // SAFETY: the bounds were checked above, and the caller got the path from
                // `KernelPath::detect` or `available`: this CPU has its instructions.
                unsafe { job.run(path, g) };
            } else {
                job.any_width();
            }
            h0 += g;
        }
    });
}

thread_local! {
    /// Per-thread scaled queries and scores, reused so that attention allocates nothing per row.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One call's operands for up to [`MAX_HEADS`] heads.
struct Job<'a> {
    /// Queries already multiplied by the scale, `[g, d]`.
    qs: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    rows: &'a PagedRows<'a>,
    d: usize,
    /// `[g, rows.len()]`.
    scores: &'a mut [f32],
    /// `[g, d]`.
    out: &'a mut [f32],
}

impl Job<'_> {
    /// Dispatches to the path's compiled body with `g` (1..=4) heads.
    unsafe fn run(self, path: KernelPath, g: usize) {
        match path {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 | KernelPath::Avx512 => x86::run(self, g),
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => neon::run(self, g),
            _ => with_heads!(g, |G| self.heads::<Scalar, G>()),
        }
    }

    /// The algorithm, for `G` heads on lanes `V`. `d` is a multiple of [`LANES`].
    #[inline(always)]
    unsafe fn heads<V: Lanes, const G: usize>(self) {
        let Job { qs, k, v, rows, d, scores, out } = self;
        let n = rows.len();
        let (qp, kp, vp) = (qs.as_ptr(), k.as_ptr(), v.as_ptr());
        rows.for_each(|j, at| {
            for h in 0..G {
                let (mut a0, mut a1) = (V::zero(), V::zero());
                let mut c = 0;
                while c + 2 * LANES <= d {
                    a0 = a0.mul_add(V::load(qp.add(h * d + c)), V::load(kp.add(at + c)));
                    a1 = a1.mul_add(V::load(qp.add(h * d + c + LANES)), V::load(kp.add(at + c + LANES)));
                    c += 2 * LANES;
                }
                if c < d {
                    a0 = a0.mul_add(V::load(qp.add(h * d + c)), V::load(kp.add(at + c)));
                }
                *scores.get_unchecked_mut(h * n + j) = a0.add(a1).sum();
            }
        });
        for h in 0..G {
            softmax(&mut scores[h * n..(h + 1) * n]);
        }
        let sp = scores.as_ptr();
        let mut c = 0;
        while c < d {
            let two = c + 2 * LANES <= d;
            let mut acc = [[V::zero(); 2]; G];
            rows.for_each(|j, at| {
                let v0 = V::load(vp.add(at + c));
                let v1 = if two { V::load(vp.add(at + c + LANES)) } else { V::zero() };
                for (h, acc) in acc.iter_mut().enumerate() {
                    let p = V::splat(*sp.add(h * n + j));
                    acc[0] = acc[0].mul_add(p, v0);
                    acc[1] = acc[1].mul_add(p, v1);
                }
            });
            for (h, acc) in acc.iter().enumerate() {
                acc[0].store(out.as_mut_ptr().add(h * d + c));
                if two {
                    acc[1].store(out.as_mut_ptr().add(h * d + c + LANES));
                }
            }
            c += if two { 2 * LANES } else { LANES };
        }
    }

    /// The scalar algorithm for any head dimension (a multiple of [`LANES`] or not).
    fn any_width(self) {
        let Job { qs, k, v, rows, d, scores, out } = self;
        let n = rows.len();
        let heads = qs.len() / d;
        rows.for_each(|j, at| {
            for h in 0..heads {
                scores[h * n + j] = qs[h * d..(h + 1) * d].iter().zip(&k[at..at + d]).map(|(a, b)| a * b).sum();
            }
        });
        for h in 0..heads {
            softmax(&mut scores[h * n..(h + 1) * n]);
        }
        out.fill(0.0);
        rows.for_each(|j, at| {
            for h in 0..heads {
                let p = scores[h * n + j];
                out[h * d..(h + 1) * d].iter_mut().zip(&v[at..at + d]).for_each(|(o, x)| *o += p * x);
            }
        });
    }
}

/// Normalises `scores` in place to `exp(s - max) / sum`.
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    let inv = 1.0 / total;
    scores.iter_mut().for_each(|s| *s *= inv);
}

/// Lanes of one vector of every path.
const LANES: usize = 8;

/// Eight f32 lanes: what the algorithm needs of a SIMD register.
trait Lanes: Copy {
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, b: Self) -> Self;
    /// `self + a * b`.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    /// The lanes' sum, in a fixed pairwise order.
    unsafe fn sum(self) -> f32;
}

/// Portable lanes (a separate multiply and add, as scalar code rounds).
#[derive(Clone, Copy)]
struct Scalar([f32; LANES]);

impl Lanes for Scalar {
    unsafe fn zero() -> Self {
        Self([0.0; LANES])
    }
    unsafe fn splat(x: f32) -> Self {
        Self([x; LANES])
    }
    unsafe fn load(p: *const f32) -> Self {
        Self(std::ptr::read_unaligned(p as *const [f32; LANES]))
    }
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; LANES], self.0)
    }
    unsafe fn add(self, b: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] + b.0[l]))
    }
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] + a.0[l] * b.0[l]))
    }
    unsafe fn sum(self) -> f32 {
        let x = self.0;
        ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7]))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Job, Lanes};
    use std::arch::x86_64::*;

    /// The AVX2 + FMA body (`is_supported` checked both features).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(job: Job, g: usize) {
        with_heads!(g, |G| job.heads::<Avx, G>())
    }

    #[derive(Clone, Copy)]
    struct Avx(__m256);

    impl Lanes for Avx {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Self(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Self(_mm256_add_ps(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Self(_mm256_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // Lanes l and l + 4, then l and l + 2, then l and l + 1: the scalar path's order.
            let quad = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{Job, Lanes};
    use std::arch::aarch64::*;

    /// The NEON body (every AArch64 CPU has NEON).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn run(job: Job, g: usize) {
        with_heads!(g, |G| job.heads::<Neon, G>())
    }

    #[derive(Clone, Copy)]
    struct Neon(float32x4_t, float32x4_t);

    impl Lanes for Neon {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Self(vdupq_n_f32(x), vdupq_n_f32(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(vld1q_f32(p), vld1q_f32(p.add(4)))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            vst1q_f32(p, self.0);
            vst1q_f32(p.add(4), self.1);
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Self(vaddq_f32(self.0, b.0), vaddq_f32(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Self(vfmaq_f32(self.0, a.0, b.0), vfmaq_f32(self.1, a.1, b.1))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // Lanes l and l + 4, then l and l + 2, then l and l + 1: the scalar path's order.
            let quad = vaddq_f32(self.0, self.1);
            let pair = vadd_f32(vget_low_f32(quad), vget_high_f32(quad));
            vget_lane_f32::<0>(pair) + vget_lane_f32::<1>(pair)
        }
    }
}
