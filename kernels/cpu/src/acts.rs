//! Activations quantized to 8 bits, once per matmul call, and reused against every weight row.
//! Each block gets a symmetric scale `amax / 127` and codes rounded to nearest (ties to even) in
//! -127..=127; the block sums let the kernels apply weight zero points and minimums without touching
//! codes.
//! A row's quantization depends only on that row, so it is the same whatever the batch.

/// Activation rows quantized by blocks of 32, for the 32-block formats (like Q8_1).
pub(crate) struct Acts32 {
    k: usize,
    qs: Vec<i8>,
    scale: Vec<f32>,
    /// `Σ codes` per block, for weight zero points.
    isum: Vec<i32>,
    /// `scale * Σ codes` per block, for weight minimums.
    sum: Vec<f32>,
}

/// Activation rows quantized by super-blocks of 256, for the K-quants (like Q8_K).
pub(crate) struct Acts256 {
    k: usize,
    qs: Vec<i8>,
    scale: Vec<f32>,
    /// `Σ codes` per 16 codes, for the weights' sub-block corrections (Q6_K's sub-blocks).
    bsums: Vec<i16>,
    /// `Σ codes` per 32 codes (Q4_K's and Q5_K's sub-blocks).
    bsums32: Vec<i16>,
}

/// Quantizes one block, returning its scale. Written so that the compiler vectorises it: the
/// maximum over eight running lanes, and rounding by the float-add trick (adding 1.5 · 2²³ leaves
/// the value rounded to nearest, ties to even, in the low mantissa bits), which gives exactly
/// `round_ties_even` for the |v| ≤ 127 that occur here, without a saturating cast per value.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for chunk in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let amax = lanes.iter().fold(0.0f32, |a, &v| if v > a { v } else { a });
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return 0.0;
    }
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³
    let inv = 127.0 / amax;
    for (q, v) in q.iter_mut().zip(x) {
        *q = ((v * inv + ROUND).to_bits() as i32 - ROUND.to_bits() as i32) as i8;
    }
    amax / 127.0
}

impl Acts32 {
    /// Quantizes `m` rows of `k` values (`x` is `[m, k]` row-major; `k` a multiple of 32).
    pub(crate) fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let blocks = m * k / 32;
        let mut acts =
            Self { k, qs: vec![0; m * k], scale: vec![0.0; blocks], isum: vec![0; blocks], sum: vec![0.0; blocks] };
        let stats = acts.scale.iter_mut().zip(&mut acts.isum).zip(&mut acts.sum);
        for ((x, q), ((scale, isum), sum)) in x.chunks_exact(32).zip(acts.qs.chunks_exact_mut(32)).zip(stats) {
            *scale = quantize_block(x, q);
            *isum = q.iter().map(|&c| i32::from(c)).sum();
            *sum = *scale * *isum as f32;
        }
        acts
    }

    pub(crate) fn qs(&self, row: usize) -> &[i8] {
        &self.qs[row * self.k..][..self.k]
    }

    pub(crate) fn scale(&self, row: usize) -> &[f32] {
        &self.scale[row * self.k / 32..][..self.k / 32]
    }

    pub(crate) fn isum(&self, row: usize) -> &[i32] {
        &self.isum[row * self.k / 32..][..self.k / 32]
    }

    pub(crate) fn sum(&self, row: usize) -> &[f32] {
        &self.sum[row * self.k / 32..][..self.k / 32]
    }
}

impl Acts256 {
    /// Quantizes `m` rows of `k` values (`x` is `[m, k]` row-major; `k` a multiple of 256).
    pub(crate) fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let mut acts = Self {
            k,
            qs: vec![0; m * k],
            scale: vec![0.0; m * k / 256],
            bsums: vec![0; m * k / 16],
            bsums32: vec![0; m * k / 32],
        };
        let blocks = x.chunks_exact(256).zip(acts.qs.chunks_exact_mut(256));
        for ((x, q), scale) in blocks.zip(acts.scale.iter_mut()) {
            *scale = quantize_block(x, q);
        }
        for (q, bsum) in acts.qs.chunks_exact(16).zip(&mut acts.bsums) {
            *bsum = q.iter().map(|&c| i16::from(c)).sum();
        }
        for (pair, bsum) in acts.bsums.chunks_exact(2).zip(&mut acts.bsums32) {
            *bsum = pair[0] + pair[1];
        }
        acts
    }

    pub(crate) fn qs(&self, row: usize) -> &[i8] {
        &self.qs[row * self.k..][..self.k]
    }

    pub(crate) fn scale(&self, row: usize) -> &[f32] {
        &self.scale[row * self.k / 256..][..self.k / 256]
    }

    /// `Σ codes` per `sub_len` (16 or 32) codes of a row.
    pub(crate) fn sums(&self, row: usize, sub_len: usize) -> &[i16] {
        let per_row = self.k / sub_len;
        match sub_len {
            16 => &self.bsums[row * per_row..][..per_row],
            _ => &self.bsums32[row * per_row..][..per_row],
        }
    }
}
