//! The AArch64 path: NEON with the dot-product extension (`sdot`: four i8 × i8 products summed into
//! each i32 lane), as on Apple Silicon. Codes go in as signed bytes: Q8_0's are, and every other
//! format's are at most 63. `sdot` is written as inline assembly because its intrinsic is not stable.
//!
//! Like the x86 bodies, each (weight row, activation row) pair keeps one f32 accumulator vector,
//! reduced once at the end, so results do not depend on the tile.

use super::{with_rows, TileOut};
use crate::acts::{Acts256, Acts32};
use crate::unpack::{Rows256, Rows32};
use core::arch::aarch64::*;
use core::arch::asm;
use std::array;

/// 4 weight rows × 4 activation rows: 16 accumulators and 8 activation vectors in 32 registers.
pub(super) const SHAPE: (usize, usize) = (4, 4);

/// `acc` plus, per i32 lane, the sum of four i8 × i8 products.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: only reached from `#[target_feature(enable = "dotprod")]` functions, which the caller
    // runs only where `dotprod` was detected.
    asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// SAFETY: the CPU has NEON and dotprod; `mr` ≤ the NEON MR.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile32(w: &Rows32, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32_body::<{ SHAPE.0 }, R>(w, acts, m0))
}

/// SAFETY: the CPU has NEON and dotprod; `mr` ≤ the NEON MR.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile256(w: &Rows256, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256_body::<{ SHAPE.0 }, R>(w, acts, m0))
}

/// 32-block formats: per block and pair, `acc += (d_w d_a) * (codes · qs - zero Σ qs)` on 4 lanes
/// (the zero point rides in lane 0 of the integer accumulator); minimums are a separate f32 dot
/// product added after the reduction.
#[inline(always)]
unsafe fn tile32_body<const NR: usize, const MR: usize>(w: &Rows32, acts: &Acts32, m0: usize) -> TileOut {
    let wq: [*const i8; NR] = array::from_fn(|n| w.codes(n).as_ptr().cast());
    let ws: [&[f32]; NR] = array::from_fn(|n| w.scale(n));
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let asum: [&[i32]; MR] = array::from_fn(|m| acts.isum(m0 + m));
    let zero = w.format().zero_point();
    let mut acc = [[vdupq_n_f32(0.0); MR]; NR];
    for b in 0..w.k() / 32 {
        let a: [(int8x16_t, int8x16_t); MR] =
            array::from_fn(|m| (vld1q_s8(aq[m].add(32 * b)), vld1q_s8(aq[m].add(32 * b + 16))));
        let init: [int32x4_t; MR] =
            array::from_fn(|m| vsetq_lane_s32::<0>(-zero * *asum[m].get_unchecked(b), vdupq_n_s32(0)));
        for n in 0..NR {
            let (lo, hi) = (vld1q_s8(wq[n].add(32 * b)), vld1q_s8(wq[n].add(32 * b + 16)));
            let dw = *ws[n].get_unchecked(b);
            for m in 0..MR {
                let dot = sdot(sdot(init[m], lo, a[m].0), hi, a[m].1);
                let scale = vdupq_n_f32(dw * *asc[m].get_unchecked(b));
                acc[n][m] = vfmaq_f32(acc[n][m], vcvtq_f32_s32(dot), scale);
            }
        }
    }
    let mut out = TileOut::default();
    for (n, acc) in acc.iter().enumerate() {
        for (m, &acc) in acc.iter().enumerate() {
            out[m][n] = match w.format().has_min() {
                true => vaddvq_f32(acc) + w.min(n).iter().zip(acts.sum(m0 + m)).map(|(&o, &s)| o * s).sum::<f32>(),
                false => vaddvq_f32(acc),
            };
        }
    }
    out
}

/// Super-block formats: per super-block and pair, `Σ_j scale16_j (codes_j · qs_j)` in i32 lanes and
/// `Σ_j min16_j bsum_j`; the zero point is subtracted in integers, then one f32 multiply-add (two
/// with minimums).
#[inline(always)]
unsafe fn tile256_body<const NR: usize, const MR: usize>(w: &Rows256, acts: &Acts256, m0: usize) -> TileOut {
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let ab: [*const i16; MR] = array::from_fn(|m| acts.bsums(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let (zero, has_min) = (w.format().zero_point(), w.format().has_min());
    let mut acc = [[vdupq_n_f32(0.0); MR]; NR];
    for s in 0..w.k() / 256 {
        for (n, acc) in acc.iter_mut().enumerate() {
            let codes: *const i8 = w.codes(n).as_ptr().add(256 * s).cast();
            let scales = &w.scale16(n)[16 * s..][..16];
            let mut dots = [vdupq_n_s32(0); MR];
            for (j, &scale) in scales.iter().enumerate() {
                let wv = vld1q_s8(codes.add(16 * j));
                for m in 0..MR {
                    let p = sdot(vdupq_n_s32(0), wv, vld1q_s8(aq[m].add(256 * s + 16 * j)));
                    dots[m] = vmlaq_n_s32(dots[m], p, i32::from(scale));
                }
            }
            let mins = w.min16(n).as_ptr().add(16 * s);
            let (mins_lo, mins_hi) = (vld1q_s16(mins), vld1q_s16(mins.add(8)));
            let (d, dmin) = (*w.d(n).get_unchecked(s), *w.dmin(n).get_unchecked(s));
            for m in 0..MR {
                let (b_lo, b_hi) = (vld1q_s16(ab[m].add(16 * s)), vld1q_s16(ab[m].add(16 * s + 8)));
                let mut min_dot = vmull_s16(vget_low_s16(mins_lo), vget_low_s16(b_lo));
                min_dot = vmlal_high_s16(min_dot, mins_lo, b_lo);
                min_dot = vmlal_s16(min_dot, vget_low_s16(mins_hi), vget_low_s16(b_hi));
                min_dot = vmlal_high_s16(min_dot, mins_hi, b_hi);
                let da = *asc[m].get_unchecked(s);
                let dot = vmlsq_n_s32(dots[m], min_dot, zero);
                acc[m] = vfmaq_f32(acc[m], vcvtq_f32_s32(dot), vdupq_n_f32(d * da));
                if has_min {
                    acc[m] = vfmaq_f32(acc[m], vcvtq_f32_s32(min_dot), vdupq_n_f32(dmin * da));
                }
            }
        }
    }
    let mut out = TileOut::default();
    for (n, acc) in acc.iter().enumerate() {
        for (m, &acc) in acc.iter().enumerate() {
            out[m][n] = vaddvq_f32(acc);
        }
    }
    out
}
