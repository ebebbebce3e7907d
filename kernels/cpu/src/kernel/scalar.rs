//! The portable path, written to be read: one (weight row, activation row) pair at a time, integer dot
//! products per block, scaled and summed in f32 in block order.

use super::TileOut;
use crate::acts::{Acts256, Acts32};
use crate::unpack::{Rows256, Rows32};

/// One weight row and one activation row per tile: the arithmetic is per pair anyway.
pub(super) const SHAPE: (usize, usize) = (1, 1);

pub(super) fn tile32(w: &Rows32, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
    let mut out = TileOut::default();
    for (i, out) in out.iter_mut().enumerate().take(mr) {
        out[0] = dot32(w, acts, m0 + i);
    }
    out
}

pub(super) fn tile256(w: &Rows256, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
    let mut out = TileOut::default();
    for (i, out) in out.iter_mut().enumerate().take(mr) {
        out[0] = dot256(w, acts, m0 + i);
    }
    out
}

/// Σ over blocks of `scale_w * scale_a * (codes · qs - zero Σ qs)`, plus (formats with minimums)
/// Σ over blocks of `min_w * sum_a`.
fn dot32(w: &Rows32, acts: &Acts32, row: usize) -> f32 {
    let (signed, zero) = (w.format().signed_codes(), w.format().zero_point());
    let blocks = w.codes(0).chunks_exact(32).zip(acts.qs(row).chunks_exact(32)).zip(acts.isum(row));
    let scales = w.scale(0).iter().zip(acts.scale(row));
    let mut acc = 0.0f32;
    for (((codes, qs), &isum), (&dw, &da)) in blocks.zip(scales) {
        let dot: i32 = codes
            .iter()
            .zip(qs)
            .map(|(&c, &q)| if signed { i32::from(c as i8) } else { i32::from(c) } * i32::from(q))
            .sum();
        acc += (dw * da) * (dot - zero * isum) as f32;
    }
    match w.format().has_min() {
        true => acc + w.min(0).iter().zip(acts.sum(row)).map(|(&o, &s)| o * s).sum::<f32>(),
        false => acc,
    }
}

/// Σ over super-blocks of `d_w d_a (Σ_j scale16_j (codes_j · qs_j) - zero Σ_j min16_j bsum_j)`, plus
/// (formats with minimums) `dmin_w d_a Σ_j min16_j bsum_j`.
fn dot256(w: &Rows256, acts: &Acts256, row: usize) -> f32 {
    let supers = w.codes(0).chunks_exact(256).zip(acts.qs(row).chunks_exact(256));
    let subs = w.scale16(0).chunks_exact(16).zip(w.min16(0).chunks_exact(16)).zip(acts.bsums(row).chunks_exact(16));
    let floats = w.d(0).iter().zip(w.dmin(0)).zip(acts.scale(row));
    let (zero, has_min) = (w.format().zero_point(), w.format().has_min());
    let mut acc = 0.0f32;
    for (((codes, qs), ((scale16, min16), bsums)), ((&d, &dmin), &da)) in supers.zip(subs).zip(floats) {
        let mut dot = 0i32;
        for ((codes, qs), &scale) in codes.chunks_exact(16).zip(qs.chunks_exact(16)).zip(scale16) {
            let sub: i32 = codes.iter().zip(qs).map(|(&c, &q)| i32::from(c) * i32::from(q)).sum();
            dot += i32::from(scale) * sub;
        }
        let mins: i32 = min16.iter().zip(bsums).map(|(&m, &b)| i32::from(m) * i32::from(b)).sum();
        acc += (d * da) * (dot - zero * mins) as f32;
        if has_min {
            acc += (dmin * da) * mins as f32;
        }
    }
    acc
}
