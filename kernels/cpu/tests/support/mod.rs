//! Test matrices: simple reference quantizers that write GGUF blocks from f32 rows (their own code,
//! independent of the crate's unpacking), a seeded generator, and the f32 reference matmul.

#![allow(dead_code)]

use bodega_cpu_kernels::{QuantFormat, QuantMatrix};

/// xorshift64*: deterministic test data without dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values with a few outliers, like real activations.
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = self.next_f32();
                if i % 37 == 5 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }
}

/// f32 → f16 bits, round to nearest (normal and zero values only: test scales are in range).
pub fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "test scale {x} outside the f16 normal range");
    let mant = b & 0x7f_ffff;
    let half = (((exp as u32) << 10) | (mant >> 13)) + ((mant >> 12) & 1);
    sign | half as u16
}

/// The value of f16 bits (normal and zero only).
pub fn f16_value(h: u16) -> f32 {
    if h & 0x7fff == 0 {
        return 0.0;
    }
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f) - 15;
    sign * (1.0 + f32::from(h & 0x3ff) / 1024.0) * 2f32.powi(exp)
}

/// An f32 scale rounded through f16: the bytes and the value they hold.
fn half(x: f32) -> ([u8; 2], f32) {
    let h = f16_bits(x);
    (h.to_le_bytes(), f16_value(h))
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, v| a.max(v.abs()))
}

fn code(x: f32, scale: f32, zero: f32, max: f32) -> u8 {
    let q = if scale == 0.0 { zero } else { (x / scale).round() + zero };
    q.clamp(0.0, max) as u8
}

/// Quantizes rows of `k` values into `format`'s GGUF blocks, returning the bytes and the values the
/// blocks decode to (by this file's reading of the format).
pub fn quantize(format: QuantFormat, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut decoded = Vec::new();
    for block in x.chunks_exact(format.block_len()) {
        match format {
            QuantFormat::Q4_0 => q4_0(block, &mut bytes, &mut decoded),
            QuantFormat::Q4_1 => q4_1(block, &mut bytes, &mut decoded),
            QuantFormat::Q5_0 => q5_0(block, &mut bytes, &mut decoded),
            QuantFormat::Q8_0 => q8_0(block, &mut bytes, &mut decoded),
            QuantFormat::Q4K => qk_min(block, 15, &mut bytes, &mut decoded),
            QuantFormat::Q5K => qk_min(block, 31, &mut bytes, &mut decoded),
            QuantFormat::Q6K => q6k(block, &mut bytes, &mut decoded),
        }
    }
    (bytes, decoded)
}

fn q4_0(x: &[f32], bytes: &mut Vec<u8>, decoded: &mut Vec<f32>) {
    let (d_bytes, d) = half(amax(x) / 7.0);
    let q: Vec<u8> = x.iter().map(|&v| code(v, d, 8.0, 15.0)).collect();
    bytes.extend(d_bytes);
    bytes.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
    decoded.extend(q.iter().map(|&q| d * (f32::from(q) - 8.0)));
}

fn q4_1(x: &[f32], bytes: &mut Vec<u8>, decoded: &mut Vec<f32>) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (d_bytes, d) = half((max - min) / 15.0);
    let (m_bytes, m) = half(min);
    let q: Vec<u8> = x.iter().map(|&v| code(v - m, d, 0.0, 15.0)).collect();
    bytes.extend(d_bytes);
    bytes.extend(m_bytes);
    bytes.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
    decoded.extend(q.iter().map(|&q| d * f32::from(q) + m));
}

fn q5_0(x: &[f32], bytes: &mut Vec<u8>, decoded: &mut Vec<f32>) {
    let (d_bytes, d) = half(amax(x) / 15.0);
    let q: Vec<u8> = x.iter().map(|&v| code(v, d, 16.0, 31.0)).collect();
    let qh: u32 = q.iter().enumerate().map(|(i, &q)| u32::from(q >> 4) << i).sum();
    bytes.extend(d_bytes);
    bytes.extend(qh.to_le_bytes());
    bytes.extend((0..16).map(|i| (q[i] & 15) | ((q[i + 16] & 15) << 4)));
    decoded.extend(q.iter().map(|&q| d * (f32::from(q) - 16.0)));
}

fn q8_0(x: &[f32], bytes: &mut Vec<u8>, decoded: &mut Vec<f32>) {
    let (d_bytes, d) = half(amax(x) / 127.0);
    let q: Vec<i8> = x.iter().map(|&v| if d == 0.0 { 0 } else { (v / d).round().clamp(-127.0, 127.0) as i8 }).collect();
    bytes.extend(d_bytes);
    bytes.extend(q.iter().map(|&q| q as u8));
    decoded.extend(q.iter().map(|&q| d * f32::from(q)));
}

/// Q4_K (`max` 15) and Q5_K (`max` 31): sub-blocks of 32 with 6-bit scales and minimums.
fn qk_min(x: &[f32], max: u8, bytes: &mut Vec<u8>, decoded: &mut Vec<f32>) {
    let subs: Vec<(f32, f32)> = x
        .chunks_exact(32)
        .map(|s| {
            let lo = s.iter().copied().fold(0.0f32, f32::min);
            let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ((hi - lo) / f32::from(max), -lo)
        })
        .collect();
    let (d_bytes, d) = half(subs.iter().map(|s| s.0).fold(0.0, f32::max) / 63.0);
    let (dmin_bytes, dmin) = half(subs.iter().map(|s| s.1).fold(0.0, f32::max) / 63.0);
    let six = |v: f32, unit: f32| if unit == 0.0 { 0u8 } else { (v / unit).round().clamp(0.0, 63.0) as u8 };
    let scales: Vec<u8> = subs.iter().map(|s| six(s.0, d).max(1)).collect();
    let mins: Vec<u8> = subs.iter().map(|s| six(s.1, dmin)).collect();
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
        packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
        packed[j + 8] = (scales[j + 4] & 15) | ((mins[j + 4] & 15) << 4);
    }
    let q: Vec<u8> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let j = i / 32;
            code(v + dmin * f32::from(mins[j]), d * f32::from(scales[j]), 0.0, f32::from(max))
        })
        .collect();
    bytes.extend(d_bytes);
    bytes.extend(dmin_bytes);
    bytes.extend(packed);
    if max == 31 {
        bytes.extend((0..32).map(|l| (0..8).map(|i| (q[32 * i + l] >> 4) << i).sum::<u8>()));
    }
    for c in 0..4 {
        bytes.extend((0..32).map(|l| (q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4)));
    }
    decoded.extend(q.iter().enumerate().map(|(i, &q)| {
        let j = i / 32;
        d * f32::from(scales[j]) * f32::from(q) - dmin * f32::from(mins[j])
    }));
}

/// Q6_K: sub-blocks of 16 with signed 8-bit scales, codes 0..=63 around 32.
fn q6k(x: &[f32], bytes: &mut Vec<u8>, decoded: &mut Vec<f32>) {
    let subs: Vec<f32> = x.chunks_exact(16).map(|s| amax(s) / 31.0).collect();
    let (d_bytes, d) = half(subs.iter().copied().fold(0.0, f32::max) / 127.0);
    // Alternate signs to exercise negative scales.
    let scales: Vec<i8> = subs
        .iter()
        .enumerate()
        .map(|(j, &s)| {
            let mag = if d == 0.0 { 0.0 } else { (s / d).round().clamp(1.0, 127.0) };
            (if j % 3 == 1 { -mag } else { mag }) as i8
        })
        .collect();
    let q: Vec<u8> = x.iter().enumerate().map(|(i, &v)| code(v, d * f32::from(scales[i / 16]), 32.0, 63.0)).collect();
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for h in 0..2 {
        for l in 0..32 {
            let c = |quarter: usize| q[128 * h + 32 * quarter + l];
            ql[64 * h + l] = (c(0) & 15) | ((c(2) & 15) << 4);
            ql[64 * h + l + 32] = (c(1) & 15) | ((c(3) & 15) << 4);
            qh[32 * h + l] = (c(0) >> 4) | ((c(1) >> 4) << 2) | ((c(2) >> 4) << 4) | ((c(3) >> 4) << 6);
        }
    }
    bytes.extend(ql);
    bytes.extend(qh);
    bytes.extend(scales.iter().map(|&s| s as u8));
    bytes.extend(d_bytes);
    decoded.extend(q.iter().enumerate().map(|(i, &q)| d * f32::from(scales[i / 16]) * (f32::from(q) - 32.0)));
}

/// A random `rows` × `cols` matrix in `format`, and the f32 values it decodes to.
pub fn matrix(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> (QuantMatrix, Vec<f32>) {
    let (bytes, decoded) = gguf(format, rows, cols, seed);
    (QuantMatrix::new(format, rows, cols, bytes).unwrap(), decoded)
}

/// The GGUF bytes of [`matrix`], and the f32 values they decode to.
pub fn gguf(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    quantize(format, &Rng::new(seed).values(rows * cols))
}

/// `out[m][n] = Σ_k x[m][k] w[n][k]` in f64, and the bound on what 8-bit activations may change:
/// each activation moves by at most half its block's step (`amax / 254`), so an output moves by at
/// most `Σ_k |w[n][k]| amax(block of k) / 254`.
pub fn reference(w: &[f32], x: &[f32], m: usize, k: usize, act_block: usize) -> (Vec<f64>, Vec<f64>) {
    let n = w.len() / k;
    let steps: Vec<f64> = x
        .chunks_exact(act_block)
        .flat_map(|b| {
            let step = f64::from(amax(b)) / 254.0;
            std::iter::repeat_n(step, act_block)
        })
        .collect();
    let mut out = vec![0.0; m * n];
    let mut bound = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (x, s, w) = (&x[i * k..][..k], &steps[i * k..][..k], &w[j * k..][..k]);
            out[i * n + j] = x.iter().zip(w).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            bound[i * n + j] = w.iter().zip(s).map(|(&b, &s)| f64::from(b).abs() * s).sum::<f64>()
                + 1e-5 * x.iter().zip(w).map(|(&a, &b)| f64::from(a * b).abs()).sum::<f64>();
        }
    }
    (out, bound)
}

/// `Σ_k |x[m][k] w[n][k]|` per output: the scale of its rounding errors.
pub fn magnitude(w: &[f32], x: &[f32], m: usize, k: usize) -> Vec<f64> {
    let n = w.len() / k;
    (0..m * n)
        .map(|o| {
            let (x, w) = (&x[o / n * k..][..k], &w[o % n * k..][..k]);
            x.iter().zip(w).map(|(&a, &b)| f64::from(a * b).abs()).sum()
        })
        .collect()
}
