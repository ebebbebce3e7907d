//! The portable path, written to be read: one (weight row, activation row) pair at a time, reading
//! the packed records value by value; integer dot products per block (or sub-block), scaled and summed
//! in f32 in block order. The SIMD paths compute the same sums, eight rows per vector.

use super::TileOut;
use crate::acts::{Acts256, Acts32};
use crate::packed::{Group, LANES};

/// Activation rows per tile: the arithmetic is per pair anyway.
pub(super) const MR: usize = 1;

pub(super) fn tile32(w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    let mut out = TileOut::default();
    for (i, out) in out.iter_mut().enumerate().take(mr) {
        for (r, out) in out.iter_mut().enumerate().take(LANES) {
            *out = dot32(w, r, acts, m0 + i);
        }
    }
    out
}

pub(super) fn tile256(w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    let mut out = TileOut::default();
    for (i, out) in out.iter_mut().enumerate().take(mr) {
        for (r, out) in out.iter_mut().enumerate().take(LANES) {
            *out = dot256(w, r, acts, m0 + i);
        }
    }
    out
}

/// Σ over blocks of `scale_w * scale_a * (codes · qs - zero Σ qs)`, plus (formats with minimums)
/// `min_w * sum_a`.
fn dot32(w: Group, r: usize, acts: &Acts32, row: usize) -> f32 {
    let (qs, scale, isum, sum) = (acts.qs(row), acts.scale(row), acts.isum(row), acts.sum(row));
    let zero = w.format.zero_point();
    let mut acc = 0.0f32;
    for b in 0..w.units() {
        let rec = w.record(b);
        let dot: i32 = (0..32).map(|i| rec.code(w.format, r, i) * i32::from(qs[32 * b + i])).sum();
        acc += (rec.float(0, r) * scale[b]) * (dot - zero * isum[b]) as f32;
        if w.format.has_min() {
            acc += rec.float(1, r) * sum[b];
        }
    }
    acc
}

/// Σ over super-blocks of `d_w d_a Σ_j s_j (codes_j · qs_j) + dm_w d_a Σ_j c_j Σ qs_j` (sub-block
/// scales `s`, corrections `c`).
fn dot256(w: Group, r: usize, acts: &Acts256, row: usize) -> f32 {
    let (subs, sub_len) = (w.geo.subs, w.geo.sub_len());
    let (qs, sums, scale) = (acts.qs(row), acts.sums(row, sub_len), acts.scale(row));
    let mut acc = 0.0f32;
    for s in 0..w.units() {
        let rec = w.record(s);
        let (mut dot, mut corr) = (0i32, 0i32);
        for j in 0..subs {
            let codes = sub_len * j..sub_len * (j + 1);
            let sub: i32 = codes.map(|i| rec.code(w.format, r, i) * i32::from(qs[256 * s + i])).sum();
            dot += rec.scale(j, r) * sub;
            corr += rec.corr(j, r) * i32::from(sums[subs * s + j]);
        }
        acc += (rec.float(0, r) * scale[s]) * dot as f32;
        acc += (rec.float(1, r) * scale[s]) * corr as f32;
    }
    acc
}
