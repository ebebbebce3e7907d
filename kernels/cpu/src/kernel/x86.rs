//! The x86-64 paths. One generic body per family, instantiated twice: AVX2 (16 vector registers,
//! `vpmaddubsw` + `vpmaddwd`) and AVX-512 (32 registers through AVX-512VL, so more activation rows per
//! tile, and VNNI's fused `vpdpbusd` / `vpdpwssd` when present). Both work on 256-bit vectors whose
//! eight 32-bit lanes are the eight weight rows of a packed group (`packed.rs`): a code vector holds
//! four codes of each row, multiplied against the same four activation codes broadcast to every lane.
//!
//! Each (weight row, activation row) pair lives in one lane of one accumulator, summed block after
//! block with lane-wise operations only, so a row's result depends neither on its lane nor on the
//! other activation rows of the tile.

use super::{with_rows, TileOut, BYTES, NIBBLES, PLANES};
use crate::acts::{Acts256, Acts32};
use crate::packed::Group;
use crate::QuantFormat;
use core::arch::x86_64::*;
use std::array;

/// AVX2: activation rows per tile (4 × 2 or 3 accumulators of 16 registers).
pub(super) const AVX2_MR: usize = 4;
/// AVX-512: activation rows per tile, in 32 registers.
pub(super) const AVX512_MR: usize = 8;

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

/// SAFETY: the CPU has AVX2 and FMA (`avx2_supported`); `mr` ≤ [`AVX2_MR`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile32_avx2(w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32::<Maddubs, R>(w, acts, m0))
}

/// SAFETY: the CPU has AVX2 and FMA (`avx2_supported`); `mr` ≤ [`AVX2_MR`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile256_avx2(w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256::<Maddubs, R>(w, acts, m0))
}

/// SAFETY: the CPU has AVX-512 F/BW/VL (`avx512_supported`); `mr` ≤ [`AVX512_MR`].
pub(super) unsafe fn tile32_avx512(w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    match vnni_supported() {
        true => tile32_vnni(w, acts, m0, mr),
        false => tile32_avx512bw(w, acts, m0, mr),
    }
}

/// SAFETY: the CPU has AVX-512 F/BW/VL (`avx512_supported`); `mr` ≤ [`AVX512_MR`].
pub(super) unsafe fn tile256_avx512(w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    match vnni_supported() {
        true => tile256_vnni(w, acts, m0, mr),
        false => tile256_avx512bw(w, acts, m0, mr),
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile32_vnni(w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32::<Vnni, R>(w, acts, m0))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile256_vnni(w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256::<Vnni, R>(w, acts, m0))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn tile32_avx512bw(w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile32::<Maddubs, R>(w, acts, m0))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn tile256_avx512bw(w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    with_rows!(mr, |R| tile256::<Maddubs, R>(w, acts, m0))
}

/// Q8_0: signed codes, multiplied as `|w| * (a with w's sign)`.
const SIGNED: u8 = 0;
/// Q4_0, Q5_0: unsigned codes less a zero point, subtracted in the integer dot product.
const ZERO: u8 = 1;
/// Q4_1: unsigned codes plus a per-block minimum.
const MIN: u8 = 2;

#[inline(always)]
unsafe fn tile32<D: Dot, const MR: usize>(w: Group, acts: &Acts32, m0: usize) -> TileOut {
    match w.format {
        QuantFormat::Q4_0 => tile32_body::<D, MR, ZERO, NIBBLES>(w, acts, m0),
        QuantFormat::Q4_1 => tile32_body::<D, MR, MIN, NIBBLES>(w, acts, m0),
        QuantFormat::Q5_0 => tile32_body::<D, MR, ZERO, PLANES>(w, acts, m0),
        QuantFormat::Q8_0 => tile32_body::<D, MR, SIGNED, BYTES>(w, acts, m0),
        QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q6K => unreachable!("not a 32-block format"),
    }
}

#[inline(always)]
unsafe fn tile256<D: Dot, const MR: usize>(w: Group, acts: &Acts256, m0: usize) -> TileOut {
    match w.format {
        QuantFormat::Q4K => tile256_body::<D, MR, NIBBLES, 8>(w, acts, m0),
        QuantFormat::Q5K => tile256_body::<D, MR, PLANES, 8>(w, acts, m0),
        QuantFormat::Q6K => tile256_body::<D, MR, BYTES, 16>(w, acts, m0),
        QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => {
            unreachable!("not a super-block format")
        }
    }
}

/// Group `q`'s codes (of `groups` per unit) for the 8 rows, four bytes per lane: a chunk of bytes,
/// or the low or high nibbles of chunk `q % (groups / 2)`, with bit `q % 8` of plane `q / 8` as bit 4.
#[inline(always)]
unsafe fn group_codes<const CODES: u8>(codes: *const u8, q: usize, groups: usize) -> __m256i {
    if CODES == BYTES {
        return _mm256_loadu_si256(codes.add(32 * q).cast());
    }
    let half = groups / 2;
    let raw = _mm256_loadu_si256(codes.add(32 * (q % half)).cast());
    let shifted = if q < half { raw } else { _mm256_srli_epi16(raw, 4) };
    let low = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
    if CODES == NIBBLES {
        return low;
    }
    let plane = _mm256_loadu_si256(codes.add(16 * groups + 32 * (q / 8)).cast());
    // Bit q % 8 of each byte down to bit 0, then up to bit 4 (within each byte: never across).
    let bit = _mm256_slli_epi32(_mm256_srlv_epi32(plane, _mm256_set1_epi32((q % 8) as i32)), 4);
    _mm256_or_si256(low, _mm256_and_si256(bit, _mm256_set1_epi8(0x10)))
}

/// The four activation codes at `at`, in every lane.
#[inline(always)]
unsafe fn broadcast4(qs: *const i8, at: usize) -> __m256i {
    _mm256_set1_epi32(qs.add(at).cast::<i32>().read_unaligned())
}

/// 32-block formats: per block and activation row, `acc += (d_w d_a) * (codes · qs - zero Σ qs)` (the
/// zero point starts the integer sum), then `acc += min_w * sum_a` for Q4_1.
#[inline(always)]
unsafe fn tile32_body<D: Dot, const MR: usize, const KIND: u8, const CODES: u8>(
    w: Group,
    acts: &Acts32,
    m0: usize,
) -> TileOut {
    let zero = w.format.zero_point();
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let isum: [&[i32]; MR] = array::from_fn(|m| acts.isum(m0 + m));
    let asum: [&[f32]; MR] = array::from_fn(|m| acts.sum(m0 + m));
    let codes_at = w.geo.codes_at();
    let mut acc = [_mm256_setzero_ps(); MR];
    for b in 0..w.units() {
        let rec = w.record(b).bytes().as_ptr();
        let mut dot: [__m256i; MR] = array::from_fn(|m| match KIND {
            ZERO => _mm256_set1_epi32(-zero * *isum[m].get_unchecked(b)),
            _ => _mm256_setzero_si256(),
        });
        for q in 0..8 {
            let raw = group_codes::<CODES>(rec.add(codes_at), q, 8);
            let codes = if KIND == SIGNED { _mm256_abs_epi8(raw) } else { raw };
            for m in 0..MR {
                let a = broadcast4(aq[m], 32 * b + 4 * q);
                let a = if KIND == SIGNED { _mm256_sign_epi8(a, raw) } else { a };
                dot[m] = D::dot(dot[m], codes, a);
            }
        }
        let dw = _mm256_loadu_ps(rec.cast());
        for m in 0..MR {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*asc[m].get_unchecked(b)));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[m]), scale, acc[m]);
        }
        if KIND == MIN {
            let mw = _mm256_loadu_ps(rec.add(32).cast());
            for m in 0..MR {
                acc[m] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*asum[m].get_unchecked(b)), acc[m]);
            }
        }
    }
    store(&acc)
}

/// Super-block formats: per super-block and activation row, the integer sums `Σ_j s_j (codes_j · qs_j)`
/// (one `vpmulld` per sub-block) and `Σ_j c_j Σ qs_j` (pairs of sub-blocks per `vpmaddwd`), then
/// `acc += d d_a * dot + dm d_a * corrections`.
#[inline(always)]
unsafe fn tile256_body<D: Dot, const MR: usize, const CODES: u8, const SUBS: usize>(
    w: Group,
    acts: &Acts256,
    m0: usize,
) -> TileOut {
    let sub_len = 256 / SUBS;
    let aq: [*const i8; MR] = array::from_fn(|m| acts.qs(m0 + m).as_ptr());
    let asc: [&[f32]; MR] = array::from_fn(|m| acts.scale(m0 + m));
    let sums: [*const i16; MR] = array::from_fn(|m| acts.sums(m0 + m, sub_len).as_ptr());
    let geo = w.geo;
    let mut acc = [_mm256_setzero_ps(); MR];
    for s in 0..w.units() {
        let rec = w.record(s).bytes().as_ptr();
        let (scales, corr, codes) = (rec.add(geo.scales_at()), rec.add(geo.corr_at()), rec.add(geo.codes_at()));
        let mut dot = [_mm256_setzero_si256(); MR];
        for j in 0..SUBS {
            let mut part = [_mm256_setzero_si256(); MR];
            for q in j * sub_len / 4..(j + 1) * sub_len / 4 {
                let wv = group_codes::<CODES>(codes, q, 64);
                for m in 0..MR {
                    part[m] = D::dot(part[m], wv, broadcast4(aq[m], 256 * s + 4 * q));
                }
            }
            let scale = _mm256_cvtepi16_epi32(_mm_loadu_si128(scales.add(16 * j).cast()));
            for m in 0..MR {
                dot[m] = _mm256_add_epi32(dot[m], _mm256_mullo_epi32(part[m], scale));
            }
        }
        let mut corrections = [_mm256_setzero_si256(); MR];
        for t in 0..SUBS / 2 {
            let pairs = _mm256_loadu_si256(corr.add(32 * t).cast());
            for m in 0..MR {
                let a = _mm256_set1_epi32(sums[m].add(SUBS * s + 2 * t).cast::<i32>().read_unaligned());
                corrections[m] = D::madd(corrections[m], pairs, a);
            }
        }
        let (d, dm) = (_mm256_loadu_ps(rec.cast()), _mm256_loadu_ps(rec.add(32).cast()));
        for m in 0..MR {
            let da = _mm256_set1_ps(*asc[m].get_unchecked(s));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[m]), _mm256_mul_ps(d, da), acc[m]);
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(corrections[m]), _mm256_mul_ps(dm, da), acc[m]);
        }
    }
    store(&acc)
}

/// The accumulators as a tile's results (lane r = weight row r).
#[inline(always)]
unsafe fn store<const MR: usize>(acc: &[__m256; MR]) -> TileOut {
    let mut out = TileOut::default();
    for (out, acc) in out.iter_mut().zip(acc) {
        _mm256_storeu_ps(out.as_mut_ptr(), *acc);
    }
    out
}
