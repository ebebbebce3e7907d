//! The AArch64 path: NEON with the dot-product extension (`sdot`: four i8 × i8 products summed into
//! each i32 lane), as on Apple Silicon. A packed group's 32-byte chunk of codes is two vectors (weight
//! rows 0–3 and 4–7), each multiplied against the same four activation codes in every lane. Codes go
//! in as signed bytes: Q8_0's are, and every other format's are at most 63. `sdot` is written as
//! inline assembly because its intrinsic is not stable.
//!
//! Like the x86 bodies, each (weight row, activation row) pair lives in one lane, summed block after
//! block with lane-wise operations only, so results depend neither on the lane nor on the tile.

use super::{with_rows, TileOut, BYTES, NIBBLES, PLANES};
use crate::acts::{Acts256, Acts32};
use crate::packed::Group;
use crate::QuantFormat;
use core::arch::aarch64::*;
use core::arch::asm;
use std::array;

/// Activation rows per tile: 4 × 4 accumulators and 4 × 4 integer sums in 32 registers.
pub(super) const MR: usize = 4;

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

/// SAFETY: the CPU has NEON and dotprod; `mr` ≤ [`MR`].
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile32(w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    match w.format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => with_rows!(mr, |R| tile32_body::<R, NIBBLES>(w, acts, m0)),
        QuantFormat::Q5_0 => with_rows!(mr, |R| tile32_body::<R, PLANES>(w, acts, m0)),
        _ => with_rows!(mr, |R| tile32_body::<R, BYTES>(w, acts, m0)),
    }
}

/// SAFETY: the CPU has NEON and dotprod; `mr` ≤ [`MR`].
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile256(w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    match w.format {
        QuantFormat::Q4K => with_rows!(mr, |R| tile256_body::<R, NIBBLES, 8>(w, acts, m0)),
        QuantFormat::Q5K => with_rows!(mr, |R| tile256_body::<R, PLANES, 8>(w, acts, m0)),
        _ => with_rows!(mr, |R| tile256_body::<R, BYTES, 16>(w, acts, m0)),
    }
}

/// Group `q`'s codes (of `groups` per unit) for rows 0–3 and 4–7, four bytes per lane: a chunk of
/// bytes, or the low or high nibbles of chunk `q % (groups / 2)`, with bit `q % 8` of plane `q / 8`
/// as bit 4.
#[inline(always)]
unsafe fn group_codes<const CODES: u8>(codes: *const u8, q: usize, groups: usize) -> [int8x16_t; 2] {
    if CODES == BYTES {
        let at = codes.add(32 * q).cast::<i8>();
        return [vld1q_s8(at), vld1q_s8(at.add(16))];
    }
    let half = groups / 2;
    let at = codes.add(32 * (q % half));
    let low = [vld1q_u8(at), vld1q_u8(at.add(16))].map(|v| match q < half {
        true => vandq_u8(v, vdupq_n_u8(0x0f)),
        false => vshrq_n_u8::<4>(v),
    });
    if CODES == NIBBLES {
        return low.map(|v| vreinterpretq_s8_u8(v));
    }
    let plane = codes.add(16 * groups + 32 * (q / 8));
    // Shifting each byte left by 4 - q % 8 (right where negative) puts bit q % 8 at bit 4.
    let shift = vdupq_n_s8(4 - (q % 8) as i8);
    let high = [vld1q_u8(plane), vld1q_u8(plane.add(16))].map(|p| vandq_u8(vshlq_u8(p, shift), vdupq_n_u8(0x10)));
    [vorrq_u8(low[0], high[0]), vorrq_u8(low[1], high[1])].map(|v| vreinterpretq_s8_u8(v))
}

/// The four activation codes at `at`, in every lane.
#[inline(always)]
unsafe fn broadcast4(qs: *const i8, at: usize) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_n_s32(qs.add(at).cast::<i32>().read_unaligned()))
}

/// The 8 f32 at `at` (rows 0–3, 4–7).
#[inline(always)]
unsafe fn floats(at: *const u8) -> [float32x4_t; 2] {
    [vld1q_f32(at.cast()), vld1q_f32(at.add(16).cast())]
}

/// 32-block formats: per block and activation row, `acc += (d_w d_a) * (codes · qs - zero Σ qs)` (the
/// zero point starts the integer sum), then `acc += min_w * sum_a` for Q4_1.
#[inline(always)]
unsafe fn tile32_body<const MR: usize, const CODES: u8>(w: Group, acts: &Acts32, m0: usize) -> TileOut {
    let (zero, has_min) = (w.format.zero_point(), w.format.has_min());
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let isum: [&[i32]; MR] = array::from_fn(|m| acts.isum(m0 + m));
    let asum: [&[f32]; MR] = array::from_fn(|m| acts.sum(m0 + m));
    let codes_at = w.geo.codes_at();
    let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
    for b in 0..w.units() {
        let rec = w.record(b).bytes().as_ptr();
        let mut dot: [[int32x4_t; 2]; MR] = array::from_fn(|m| [vdupq_n_s32(-zero * *isum[m].get_unchecked(b)); 2]);
        for q in 0..8 {
            let codes = group_codes::<CODES>(rec.add(codes_at), q, 8);
            for m in 0..MR {
                let a = broadcast4(aq[m], 32 * b + 4 * q);
                dot[m] = [sdot(dot[m][0], codes[0], a), sdot(dot[m][1], codes[1], a)];
            }
        }
        let dw = floats(rec);
        for m in 0..MR {
            let da = vdupq_n_f32(*asc[m].get_unchecked(b));
            for h in 0..2 {
                acc[m][h] = vfmaq_f32(acc[m][h], vcvtq_f32_s32(dot[m][h]), vmulq_f32(dw[h], da));
            }
        }
        if has_min {
            let mw = floats(rec.add(32));
            for m in 0..MR {
                let sum = vdupq_n_f32(*asum[m].get_unchecked(b));
                for h in 0..2 {
                    acc[m][h] = vfmaq_f32(acc[m][h], mw[h], sum);
                }
            }
        }
    }
    store(&acc)
}

/// Super-block formats: per super-block and activation row, `Σ_j s_j (codes_j · qs_j)` and
/// `Σ_j c_j Σ qs_j` in i32 lanes, then `acc += d d_a * dot + dm d_a * corrections`.
#[inline(always)]
unsafe fn tile256_body<const MR: usize, const CODES: u8, const SUBS: usize>(
    w: Group,
    acts: &Acts256,
    m0: usize,
) -> TileOut {
    let sub_len = 256 / SUBS;
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let sums: [*const i16; MR] = array::from_fn(|m| acts.sums(m0 + m, sub_len).as_ptr());
    let geo = w.geo;
    let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
    for s in 0..w.units() {
        let rec = w.record(s).bytes().as_ptr();
        let (scales, corr, codes) = (rec.add(geo.scales_at()), rec.add(geo.corr_at()), rec.add(geo.codes_at()));
        let mut dot = [[vdupq_n_s32(0); 2]; MR];
        for j in 0..SUBS {
            let mut part = [[vdupq_n_s32(0); 2]; MR];
            for q in j * sub_len / 4..(j + 1) * sub_len / 4 {
                let wv = group_codes::<CODES>(codes, q, 64);
                for m in 0..MR {
                    let a = broadcast4(aq[m], 256 * s + 4 * q);
                    part[m] = [sdot(part[m][0], wv[0], a), sdot(part[m][1], wv[1], a)];
                }
            }
            let at = scales.add(16 * j).cast::<i16>();
            let scale = [vmovl_s16(vld1_s16(at)), vmovl_s16(vld1_s16(at.add(4)))];
            for m in 0..MR {
                for h in 0..2 {
                    dot[m][h] = vmlaq_s32(dot[m][h], part[m][h], scale[h]);
                }
            }
        }
        let mut corrections = [[vdupq_n_s32(0); 2]; MR];
        for t in 0..SUBS / 2 {
            let at = corr.add(32 * t).cast::<i16>();
            let pairs = [vld1q_s16(at), vld1q_s16(at.add(8))];
            for m in 0..MR {
                let a =
                    vreinterpretq_s16_s32(vdupq_n_s32(sums[m].add(SUBS * s + 2 * t).cast::<i32>().read_unaligned()));
                for h in 0..2 {
                    let lo = vmull_s16(vget_low_s16(pairs[h]), vget_low_s16(a));
                    let hi = vmull_high_s16(pairs[h], a);
                    corrections[m][h] = vaddq_s32(corrections[m][h], vpaddq_s32(lo, hi));
                }
            }
        }
        let (d, dm) = (floats(rec), floats(rec.add(32)));
        for m in 0..MR {
            let da = vdupq_n_f32(*asc[m].get_unchecked(s));
            for h in 0..2 {
                acc[m][h] = vfmaq_f32(acc[m][h], vcvtq_f32_s32(dot[m][h]), vmulq_f32(d[h], da));
                acc[m][h] = vfmaq_f32(acc[m][h], vcvtq_f32_s32(corrections[m][h]), vmulq_f32(dm[h], da));
            }
        }
    }
    store(&acc)
}

/// The accumulators as a tile's results (lane r of half h = weight row 4h + r).
#[inline(always)]
unsafe fn store<const MR: usize>(acc: &[[float32x4_t; 2]; MR]) -> TileOut {
    let mut out = TileOut::default();
    for (out, acc) in out.iter_mut().zip(acc) {
        vst1q_f32(out.as_mut_ptr(), acc[0]);
        vst1q_f32(out.as_mut_ptr().add(4), acc[1]);
    }
    out
}
