//! The x86-64 paths. One generic body per family, instantiated twice: AVX2 (16 vector registers,
//! `vpmaddubsw` + `vpmaddwd`) and AVX-512 (32 registers through AVX-512VL, so larger tiles, and VNNI's
//! fused `vpdpbusd` / `vpdpwssd` when present). Both work on 256-bit vectors of 32 codes: one block of a
//! 32-block format, or an eighth of a super-block.
//!
//! Per pair the bodies keep an f32 accumulator vector whose eight lanes are reduced once, at the end,
//! in a fixed order; integer products are exact, so results depend only on the pair's data.

use super::{with_rows, TileOut};
use crate::acts::{Acts256, Acts32};
use crate::unpack::{Rows256, Rows32};
use crate::QuantFormat;
use core::arch::x86_64::*;
use std::array;

/// AVX2 tiles: 3 weight rows × 4 activation rows (12 accumulators of 16 registers; the compiler keeps
/// activations as memory operands). Measured on Zen 4 (one core, Q4_1 and Q4_K 576×1536, M = 1, 16,
/// 64) against 2×4, 4×2 and 2×6: fastest or within noise everywhere, up to 25% ahead of 2×4.
pub(super) const AVX2_SHAPE: (usize, usize) = (3, 4);
/// AVX-512 tiles: 4 × 4 accumulators with room to spare in 32 registers. Measured as for AVX2 against
/// 4×6, 3×8, 2×8 and 6×4 (Q4_1, Q4_K, Q8_0): none was better across formats.
pub(super) const AVX512_SHAPE: (usize, usize) = (4, 4);

pub(super) fn avx2_supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub(super) fn avx512_supported() -> bool {
    avx2_supported()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

pub(super) fn vnni_supported() -> bool {
    avx512_supported() && is_x86_feature_detected!("avx512vnni")
}

/// How bytes are multiplied and summed: the only difference between the instruction sets.
trait Dot {
    /// `acc` plus, per i32 lane, the sum of its four u8 × i8 products.
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i;
    /// `acc` plus, per i32 lane, the sum of its two i16 × i16 products.
    unsafe fn madd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: byte pairs to saturating i16 (never saturating here: codes are at most 63, or 128 after
/// `abs` with activations at most 127), then pairs to i32.
struct Maddubs;

impl Dot for Maddubs {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn madd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }
}

/// AVX-512 VNNI: the same sums in one instruction each (exact, so the same results as [`Maddubs`]).
struct Vnni;

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, a)
    }

    #[inline(always)]
    unsafe fn madd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, p, s)
    }
}

/// SAFETY: the CPU has AVX2 and FMA (`avx2_supported`); `mr` ≤ the AVX2 MR.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile32_avx2(w: &Rows32, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32::<Maddubs, { AVX2_SHAPE.0 }, R>(w, acts, m0))
}

/// SAFETY: the CPU has AVX2 and FMA (`avx2_supported`); `mr` ≤ the AVX2 MR.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile256_avx2(w: &Rows256, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256::<Maddubs, { AVX2_SHAPE.0 }, R>(w, acts, m0))
}

/// SAFETY: the CPU has AVX-512 F/BW/VL (`avx512_supported`); `mr` ≤ the AVX-512 MR.
pub(super) unsafe fn tile32_avx512(w: &Rows32, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    match vnni_supported() {
        true => tile32_vnni(w, acts, m0, mr),
        false => tile32_avx512bw(w, acts, m0, mr),
    }
}

/// SAFETY: the CPU has AVX-512 F/BW/VL (`avx512_supported`); `mr` ≤ the AVX-512 MR.
pub(super) unsafe fn tile256_avx512(w: &Rows256, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    match vnni_supported() {
        true => tile256_vnni(w, acts, m0, mr),
        false => tile256_avx512bw(w, acts, m0, mr),
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile32_vnni(w: &Rows32, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32::<Vnni, { AVX512_SHAPE.0 }, R>(w, acts, m0))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile256_vnni(w: &Rows256, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256::<Vnni, { AVX512_SHAPE.0 }, R>(w, acts, m0))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn tile32_avx512bw(w: &Rows32, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32::<Maddubs, { AVX512_SHAPE.0 }, R>(w, acts, m0))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn tile256_avx512bw(w: &Rows256, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256::<Maddubs, { AVX512_SHAPE.0 }, R>(w, acts, m0))
}

/// Q8_0: signed codes, multiplied as `|w| * (a with w's sign)`.
const SIGNED: u8 = 0;
/// Q4_0, Q5_0: unsigned codes less a zero point, subtracted in the integer dot product.
const ZERO: u8 = 1;
/// Q4_1: unsigned codes plus a per-block minimum.
const MIN: u8 = 2;

/// 32-block formats: per block and pair, `acc += (d_w d_a) * (codes · qs - zero Σ qs)` on 8 lanes
/// (the zero point rides in lane 0 of the integer accumulator); minimums (`Σ min_w sum_a`) are a
/// separate f32 dot product added after the reduction.
#[inline(always)]
unsafe fn tile32<D: Dot, const NR: usize, const MR: usize>(w: &Rows32, acts: &Acts32, m0: usize) -> TileOut {
    match (w.format(), w.raw(0).is_some()) {
        (QuantFormat::Q8_0, true) => tile32_body::<D, NR, MR, SIGNED, Q8Blocks>(w, acts, m0),
        (QuantFormat::Q4_0, true) => tile32_body::<D, NR, MR, ZERO, NibbleBlocks<18, 2>>(w, acts, m0),
        (QuantFormat::Q4_1, true) => tile32_body::<D, NR, MR, MIN, NibbleBlocks<20, 4>>(w, acts, m0),
        (QuantFormat::Q5_0, true) => tile32_body::<D, NR, MR, ZERO, Q5Blocks>(w, acts, m0),
        (format, _) => match (format.signed_codes(), format.has_min()) {
            (true, _) => tile32_body::<D, NR, MR, SIGNED, Unpacked>(w, acts, m0),
            (false, false) => tile32_body::<D, NR, MR, ZERO, Unpacked>(w, acts, m0),
            (false, true) => tile32_body::<D, NR, MR, MIN, Unpacked>(w, acts, m0),
        },
    }
}

/// Where a tile's codes come from: 32 per block, one vector each.
trait Codes {
    /// Where slot `n`'s codes start.
    fn base(w: &Rows32, n: usize) -> *const u8;
    /// The 32 codes of block `b`.
    unsafe fn block(base: *const u8, b: usize) -> __m256i;
}

/// Codes unpacked into the tile's buffer.
struct Unpacked;

impl Codes for Unpacked {
    fn base(w: &Rows32, n: usize) -> *const u8 {
        w.codes(n).as_ptr()
    }

    #[inline(always)]
    unsafe fn block(base: *const u8, b: usize) -> __m256i {
        _mm256_loadu_si256(base.add(32 * b).cast())
    }
}

/// Q8_0 codes read in place: 32 bytes after the block's f16 scale.
struct Q8Blocks;

impl Codes for Q8Blocks {
    fn base(w: &Rows32, n: usize) -> *const u8 {
        w.raw(n).expect("a row loaded in place")
    }

    #[inline(always)]
    unsafe fn block(base: *const u8, b: usize) -> __m256i {
        _mm256_loadu_si256(base.add(34 * b + 2).cast())
    }
}

/// Q4_0/Q4_1 codes decoded in place: 16 bytes of nibbles at `AT` in blocks of `BYTES`, the low
/// nibbles being the first 16 codes.
struct NibbleBlocks<const BYTES: usize, const AT: usize>;

impl<const BYTES: usize, const AT: usize> Codes for NibbleBlocks<BYTES, AT> {
    fn base(w: &Rows32, n: usize) -> *const u8 {
        w.raw(n).expect("a row loaded in place")
    }

    #[inline(always)]
    unsafe fn block(base: *const u8, b: usize) -> __m256i {
        let q = _mm_loadu_si128(base.add(BYTES * b + AT).cast());
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f))
    }
}

/// Q5_0 codes decoded in place: nibbles as Q4_0 (at byte 6 of 22), plus bit i of the u32 at byte 2 as
/// bit 4 of code i.
struct Q5Blocks;

impl Codes for Q5Blocks {
    fn base(w: &Rows32, n: usize) -> *const u8 {
        w.raw(n).expect("a row loaded in place")
    }

    #[inline(always)]
    unsafe fn block(base: *const u8, b: usize) -> __m256i {
        let block = base.add(22 * b);
        let nibbles = NibbleBlocks::<22, 6>::block(block, 0);
        // Byte i of the vector gets byte i / 8 of the high bits, then keeps only bit i % 8.
        let high = _mm256_set1_epi32(block.add(2).cast::<i32>().read_unaligned());
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(high, spread), bit), bit);
        _mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
}

#[inline(always)]
unsafe fn tile32_body<D: Dot, const NR: usize, const MR: usize, const KIND: u8, C: Codes>(
    w: &Rows32,
    acts: &Acts32,
    m0: usize,
) -> TileOut {
    let zero = w.format().zero_point();
    let wq: [*const u8; NR] = array::from_fn(|n| C::base(w, n));
    let ws: [&[f32]; NR] = array::from_fn(|n| w.scale(n));
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let asum: [&[i32]; MR] = array::from_fn(|m| acts.isum(m0 + m));
    let mut acc = [[_mm256_setzero_ps(); MR]; NR];
    for b in 0..w.k() / 32 {
        let a: [__m256i; MR] = array::from_fn(|m| _mm256_loadu_si256(aq[m].add(32 * b).cast()));
        let init: [__m256i; MR] = array::from_fn(|m| match KIND {
            ZERO => _mm256_setr_epi32(-zero * *asum[m].get_unchecked(b), 0, 0, 0, 0, 0, 0, 0),
            _ => _mm256_setzero_si256(),
        });
        for n in 0..NR {
            let raw = C::block(wq[n], b);
            let codes = if KIND == SIGNED { _mm256_abs_epi8(raw) } else { raw };
            let dw = _mm256_set1_ps(*ws[n].get_unchecked(b));
            for m in 0..MR {
                let qs = if KIND == SIGNED { _mm256_sign_epi8(a[m], raw) } else { a[m] };
                let dot = _mm256_cvtepi32_ps(D::dot(init[m], codes, qs));
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*asc[m].get_unchecked(b)));
                acc[n][m] = _mm256_fmadd_ps(dot, scale, acc[n][m]);
            }
        }
    }
    let mut out = TileOut::default();
    for (n, acc) in acc.iter().enumerate() {
        for (m, &acc) in acc.iter().enumerate() {
            out[m][n] = match KIND {
                MIN => hsum(acc) + dot_f32(w.min(n), acts.sum(m0 + m)),
                _ => hsum(acc),
            };
        }
    }
    out
}

/// Super-block formats: per super-block and pair, the integer sums `Σ_j scale16_j (codes_j · qs_j)`
/// (two 16-weight sub-blocks per vector, each half scaled by its own i16) and `Σ_j min16_j bsum_j`;
/// the zero point is subtracted in integers, then one f32 multiply-add (two with minimums).
#[inline(always)]
unsafe fn tile256<D: Dot, const NR: usize, const MR: usize>(w: &Rows256, acts: &Acts256, m0: usize) -> TileOut {
    match w.format().has_min() {
        true => tile256_body::<D, NR, MR, true>(w, acts, m0),
        false => tile256_body::<D, NR, MR, false>(w, acts, m0),
    }
}

#[inline(always)]
unsafe fn tile256_body<D: Dot, const NR: usize, const MR: usize, const HAS_MIN: bool>(
    w: &Rows256,
    acts: &Acts256,
    m0: usize,
) -> TileOut {
    let zero = _mm256_set1_epi32(w.format().zero_point());
    // Broadcast of two i16 scales (one i32) → low 128 bits the first scale, high 128 the second.
    let spread = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
    );
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let ab: [*const i16; MR] = array::from_fn(|m| acts.bsums(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let mut acc = [[_mm256_setzero_ps(); MR]; NR];
    for s in 0..w.k() / 256 {
        for (n, acc) in acc.iter_mut().enumerate() {
            let codes = w.codes(n).as_ptr().add(256 * s);
            let scales = w.scale16(n).as_ptr().add(16 * s);
            let mut dots = [_mm256_setzero_si256(); MR];
            for j in 0..8 {
                let wv = _mm256_loadu_si256(codes.add(32 * j).cast());
                let pair = scales.add(2 * j).cast::<i32>().read_unaligned();
                let sv = _mm256_shuffle_epi8(_mm256_set1_epi32(pair), spread);
                for m in 0..MR {
                    let qs = _mm256_loadu_si256(aq[m].add(256 * s + 32 * j).cast());
                    dots[m] = D::madd(dots[m], _mm256_maddubs_epi16(wv, qs), sv);
                }
            }
            let mins = _mm256_loadu_si256(w.min16(n).as_ptr().add(16 * s).cast());
            let (d, dmin) = (*w.d(n).get_unchecked(s), *w.dmin(n).get_unchecked(s));
            for m in 0..MR {
                let bsums = _mm256_loadu_si256(ab[m].add(16 * s).cast());
                let min_dot = _mm256_madd_epi16(mins, bsums);
                let da = *asc[m].get_unchecked(s);
                let dot = match HAS_MIN {
                    true => dots[m],
                    false => _mm256_sub_epi32(dots[m], _mm256_mullo_epi32(zero, min_dot)),
                };
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * da), acc[m]);
                if HAS_MIN {
                    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(min_dot), _mm256_set1_ps(dmin * da), acc[m]);
                }
            }
        }
    }
    let mut out = TileOut::default();
    for (n, acc) in acc.iter().enumerate() {
        for (m, &acc) in acc.iter().enumerate() {
            out[m][n] = hsum(acc);
        }
    }
    out
}

/// The sum of the 8 lanes, in a fixed order.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// `Σ x_i y_i`: 8 lanes of multiply-adds, reduced, then the tail in order.
#[inline(always)]
unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let mut v = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        v = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(y.as_ptr().add(i)), v);
        i += 8;
    }
    let mut sum = hsum(v);
    for (x, y) in x[i..n].iter().zip(&y[i..n]) {
        sum += x * y;
    }
    sum
}
