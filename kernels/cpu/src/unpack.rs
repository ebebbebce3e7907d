//! Weight rows in the kernels' common form. The matmul unpacks a few rows at a time from their GGUF
//! blocks into one byte per weight plus the block's scales, then runs the integer kernels on that:
//! each format's bit layout is handled here once, in plain Rust that the compiler vectorizes, and every
//! kernel path sees only two shapes of data (one per [`Family`](crate::format::Family)).

use crate::f16::read_f16;
use crate::QuantFormat;

/// Unpacked rows of a 32-block format: per weight a code byte, per block of 32 a scale and an offset,
/// so that `w = scale * code + offset` (Q8_0: the codes are signed bytes and the offset is zero).
pub(crate) struct Rows32 {
    k: usize,
    signed: bool,
    codes: Vec<u8>,
    scale: Vec<f32>,
    offset: Vec<f32>,
}

/// Unpacked rows of a 256-weight super-block format: per weight a code byte (0..=63), per sub-block of
/// 16 an integer scale and an integer minimum, per super-block two floats, so that
/// `w = d * scale16 * code + dmin * min16`. Q4_K and Q5_K repeat their 32-weight sub-block values over
/// both halves and fold the minimum's sign into `dmin`; Q6_K's `min16` is its scale with
/// `dmin = -32 d`, which subtracts its code offset of 32.
pub(crate) struct Rows256 {
    k: usize,
    codes: Vec<u8>,
    scale16: Vec<i16>,
    min16: Vec<i16>,
    d: Vec<f32>,
    dmin: Vec<f32>,
}

/// A buffer of unpacked weight rows (one slot per row of a kernel tile), reused across tiles.
pub(crate) trait Unpacked: Sized {
    /// Room for `rows` rows of `k` weights.
    fn new(rows: usize, k: usize) -> Self;
    /// Unpacks one row's GGUF bytes (`k / block_len` blocks of `format`) into `slot`.
    fn load(&mut self, slot: usize, format: QuantFormat, bytes: &[u8]);
    /// The f32 weights of `slot`.
    fn dequantize(&self, slot: usize, out: &mut [f32]);
}

impl Rows32 {
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Whether the codes are signed bytes (Q8_0, no offsets).
    pub(crate) fn is_signed(&self) -> bool {
        self.signed
    }

    pub(crate) fn codes(&self, slot: usize) -> &[u8] {
        &self.codes[slot * self.k..][..self.k]
    }

    pub(crate) fn scale(&self, slot: usize) -> &[f32] {
        &self.scale[slot * self.k / 32..][..self.k / 32]
    }

    pub(crate) fn offset(&self, slot: usize) -> &[f32] {
        &self.offset[slot * self.k / 32..][..self.k / 32]
    }
}

impl Unpacked for Rows32 {
    fn new(rows: usize, k: usize) -> Self {
        Self {
            k,
            signed: false,
            codes: vec![0; rows * k],
            scale: vec![0.0; rows * k / 32],
            offset: vec![0.0; rows * k / 32],
        }
    }

    fn load(&mut self, slot: usize, format: QuantFormat, bytes: &[u8]) {
        let (k, nb) = (self.k, self.k / 32);
        self.signed = format.signed_codes();
        let codes = self.codes[slot * k..][..k].chunks_exact_mut(32);
        let params = self.scale[slot * nb..][..nb].iter_mut().zip(&mut self.offset[slot * nb..][..nb]);
        let blocks = bytes.chunks_exact(format.block_bytes());
        for ((block, codes), (scale, offset)) in blocks.zip(codes).zip(params) {
            let codes: &mut [u8; 32] = codes.try_into().expect("32-byte chunk");
            let d = read_f16(block, 0);
            *scale = d;
            *offset = match format {
                QuantFormat::Q4_0 => {
                    nibbles(&block[2..18], codes);
                    -8.0 * d
                }
                QuantFormat::Q4_1 => {
                    nibbles(&block[4..20], codes);
                    read_f16(block, 2)
                }
                QuantFormat::Q5_0 => {
                    nibbles(&block[6..22], codes);
                    fifth_bits(u32::from_le_bytes([block[2], block[3], block[4], block[5]]), codes);
                    -16.0 * d
                }
                QuantFormat::Q8_0 => {
                    codes.copy_from_slice(&block[2..34]);
                    0.0
                }
                QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q6K => unreachable!("not a 32-block format"),
            };
        }
    }

    fn dequantize(&self, slot: usize, out: &mut [f32]) {
        let blocks = self.codes(slot).chunks_exact(32).zip(self.scale(slot).iter().zip(self.offset(slot)));
        for ((codes, (&scale, &offset)), out) in blocks.zip(out.chunks_exact_mut(32)) {
            for (&c, w) in codes.iter().zip(out) {
                let code = if self.signed { f32::from(c as i8) } else { f32::from(c) };
                *w = scale * code + offset;
            }
        }
    }
}

/// Low nibbles are the block's first 16 codes, high nibbles its last 16 (Q4_0, Q4_1, Q5_0).
#[inline(always)]
fn nibbles(qs: &[u8], codes: &mut [u8; 32]) {
    let qs: &[u8; 16] = qs.try_into().expect("16 bytes of nibbles");
    for i in 0..16 {
        codes[i] = qs[i] & 0x0f;
        codes[i + 16] = qs[i] >> 4;
    }
}

/// Q5_0 keeps bit 4 of code i in bit i of a little-endian u32.
#[inline(always)]
fn fifth_bits(qh: u32, codes: &mut [u8; 32]) {
    for (i, c) in codes.iter_mut().enumerate() {
        *c |= (((qh >> i) & 1) << 4) as u8;
    }
}

impl Rows256 {
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn codes(&self, slot: usize) -> &[u8] {
        &self.codes[slot * self.k..][..self.k]
    }

    pub(crate) fn scale16(&self, slot: usize) -> &[i16] {
        &self.scale16[slot * self.k / 16..][..self.k / 16]
    }

    pub(crate) fn min16(&self, slot: usize) -> &[i16] {
        &self.min16[slot * self.k / 16..][..self.k / 16]
    }

    pub(crate) fn d(&self, slot: usize) -> &[f32] {
        &self.d[slot * self.k / 256..][..self.k / 256]
    }

    pub(crate) fn dmin(&self, slot: usize) -> &[f32] {
        &self.dmin[slot * self.k / 256..][..self.k / 256]
    }
}

impl Unpacked for Rows256 {
    fn new(rows: usize, k: usize) -> Self {
        let (subs, supers) = (rows * k / 16, rows * k / 256);
        Self {
            k,
            codes: vec![0; rows * k],
            scale16: vec![0; subs],
            min16: vec![0; subs],
            d: vec![0.0; supers],
            dmin: vec![0.0; supers],
        }
    }

    fn load(&mut self, slot: usize, format: QuantFormat, bytes: &[u8]) {
        let (k, subs, supers) = (self.k, self.k / 16, self.k / 256);
        let codes = self.codes[slot * k..][..k].chunks_exact_mut(256);
        let scales = self.scale16[slot * subs..][..subs].chunks_exact_mut(16);
        let mins = self.min16[slot * subs..][..subs].chunks_exact_mut(16);
        let floats = self.d[slot * supers..][..supers].iter_mut().zip(&mut self.dmin[slot * supers..][..supers]);
        let blocks = bytes.chunks_exact(format.block_bytes());
        for ((((block, codes), scale16), min16), (d, dmin)) in blocks.zip(codes).zip(scales).zip(mins).zip(floats) {
            let codes: &mut [u8; 256] = codes.try_into().expect("256-byte chunk");
            let (scale16, min16): (&mut [i16; 16], &mut [i16; 16]) =
                (scale16.try_into().expect("16 scales"), min16.try_into().expect("16 minimums"));
            match format {
                QuantFormat::Q4K | QuantFormat::Q5K => {
                    *d = read_f16(block, 0);
                    *dmin = -read_f16(block, 2);
                    let packed: &[u8; 12] = block[4..16].try_into().expect("12 scale bytes");
                    for j in 0..8 {
                        let (scale, min) = scale_min_k4(j, packed);
                        scale16[2 * j..2 * j + 2].fill(i16::from(scale));
                        min16[2 * j..2 * j + 2].fill(i16::from(min));
                    }
                    if format == QuantFormat::Q4K {
                        k_nibbles(&block[16..144], codes);
                    } else {
                        k_nibbles(&block[48..176], codes);
                        q5k_fifth_bits(&block[16..48], codes);
                    }
                }
                QuantFormat::Q6K => {
                    q6k_codes(&block[0..128], &block[128..192], codes);
                    for (j, (s, m)) in scale16.iter_mut().zip(min16.iter_mut()).enumerate() {
                        *s = i16::from(block[192 + j] as i8);
                        *m = *s;
                    }
                    *d = read_f16(block, 208);
                    *dmin = -32.0 * *d;
                }
                QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => {
                    unreachable!("not a super-block format")
                }
            }
        }
    }

    fn dequantize(&self, slot: usize, out: &mut [f32]) {
        let subs = self.codes(slot).chunks_exact(16).zip(self.scale16(slot).iter().zip(self.min16(slot)));
        for (j, ((codes, (&scale, &min)), out)) in subs.zip(out.chunks_exact_mut(16)).enumerate() {
            let (d, dmin) = (self.d(slot)[j / 16], self.dmin(slot)[j / 16]);
            let (step, base) = (d * f32::from(scale), dmin * f32::from(min));
            for (&c, w) in codes.iter().zip(out) {
                *w = step * f32::from(c) + base;
            }
        }
    }
}

/// Scale and minimum of sub-block `j` of Q4_K/Q5_K: six bits each, packed into 12 bytes (the first
/// four sub-blocks in the low bits of bytes 0..8, the last four split over bytes 8..12 and the top bits
/// of bytes 0..8).
#[inline(always)]
fn scale_min_k4(j: usize, packed: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        let scale = (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4);
        let min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        (scale, min)
    }
}

/// Q4_K/Q5_K nibbles: each 32 bytes hold 64 weights, the low nibbles first.
#[inline(always)]
fn k_nibbles(qs: &[u8], codes: &mut [u8; 256]) {
    for (q, out) in qs.chunks_exact(32).zip(codes.chunks_exact_mut(64)) {
        for l in 0..32 {
            out[l] = q[l] & 0x0f;
            out[l + 32] = q[l] >> 4;
        }
    }
}

/// Q5_K's fifth bits: bit `i` of `qh[l]` belongs to weight `32 i + l`.
#[inline(always)]
fn q5k_fifth_bits(qh: &[u8], codes: &mut [u8; 256]) {
    let qh: &[u8; 32] = qh.try_into().expect("32 high-bit bytes");
    for (i, out) in codes.chunks_exact_mut(32).enumerate() {
        for l in 0..32 {
            out[l] |= ((qh[l] >> i) & 1) << 4;
        }
    }
}

/// Q6_K codes: each half of 128 weights takes 64 bytes of low nibbles and 32 bytes of high 2-bit pairs;
/// weight `32 q + l` of the half gets nibble `l` (q even) or `l + 32` (q odd) of the low bytes, low
/// nibble for q < 2, and bits `2 q, 2 q + 1` of high byte `l`.
#[inline(always)]
fn q6k_codes(ql: &[u8], qh: &[u8], codes: &mut [u8; 256]) {
    for ((ql, qh), out) in ql.chunks_exact(64).zip(qh.chunks_exact(32)).zip(codes.chunks_exact_mut(128)) {
        for l in 0..32 {
            out[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
            out[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
            out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}
