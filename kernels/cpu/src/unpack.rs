//! GGUF rows decoded into one byte per weight plus their block parameters, a few rows at a time: each
//! format's bit layout is read here once, at load, and the packer (`packed.rs`) arranges the result
//! for the kernels. Two shapes of data, one per [`Family`](crate::format::Family).

use crate::f16::f16_column;
use crate::QuantFormat;

/// Unpacked rows of a 32-block format: per weight a code byte, per block of 32 a scale and a minimum,
/// so that `w = scale * (code - zero) + min` (Q8_0: signed codes; Q4_0, Q5_0: a zero point and no
/// minimum; Q4_1: a minimum).
pub(crate) struct Rows32 {
    k: usize,
    format: QuantFormat,
    codes: Vec<u8>,
    scale: Vec<f32>,
    min: Vec<f32>,
}

/// Unpacked rows of a 256-weight super-block format: per weight a code byte (0..=63), per sub-block of
/// 16 an integer scale and an integer minimum, per super-block two floats, so that
/// `w = d * (scale16 * code - zero * min16) + dmin * min16`. Q4_K and Q5_K repeat their 32-weight
/// sub-block values over both halves and fold the minimum's sign into `dmin` (zero point 0); Q6_K's
/// `min16` is its scale, which with its zero point 32 gives `d * scale16 * (code - 32)` (`dmin` 0).
pub(crate) struct Rows256 {
    k: usize,
    format: QuantFormat,
    codes: Vec<u8>,
    scale16: Vec<i16>,
    min16: Vec<i16>,
    d: Vec<f32>,
    dmin: Vec<f32>,
}

impl Rows32 {
    /// Room for `rows` rows of `k` weights.
    pub(crate) fn new(rows: usize, k: usize) -> Self {
        Self {
            k,
            format: QuantFormat::Q8_0,
            codes: vec![0; rows * k],
            scale: vec![0.0; rows * k / 32],
            min: vec![0.0; rows * k / 32],
        }
    }

    pub(crate) fn codes(&self, slot: usize) -> &[u8] {
        &self.codes[slot * self.k..][..self.k]
    }

    pub(crate) fn scale(&self, slot: usize) -> &[f32] {
        &self.scale[slot * self.k / 32..][..self.k / 32]
    }

    pub(crate) fn min(&self, slot: usize) -> &[f32] {
        &self.min[slot * self.k / 32..][..self.k / 32]
    }

    /// Converts the f16 scales (and minimums) of a row's blocks.
    fn load_params(&mut self, slot: usize, format: QuantFormat, bytes: &[u8]) {
        let nb = self.k / 32;
        f16_column(bytes, format.block_bytes(), 0, &mut self.scale[slot * nb..][..nb]);
        if format.has_min() {
            f16_column(bytes, format.block_bytes(), 2, &mut self.min[slot * nb..][..nb]);
        }
    }

    /// Unpacks blocks of `B` bytes whose scale is the f16 at their start: `unpack` writes a block's
    /// codes.
    #[inline(always)]
    fn load_blocks<const B: usize>(&mut self, slot: usize, bytes: &[u8], unpack: impl Fn(&[u8; B], &mut [u8; 32])) {
        let k = self.k;
        let codes = self.codes[slot * k..][..k].chunks_exact_mut(32);
        for (block, codes) in bytes.chunks_exact(B).zip(codes) {
            unpack(block.try_into().expect("one block"), codes.try_into().expect("32-byte chunk"));
        }
        self.load_params(slot, self.format, bytes);
    }

    /// Decodes one row's GGUF bytes (`k / 32` blocks of `format`) into `slot`.
    pub(crate) fn load(&mut self, slot: usize, format: QuantFormat, bytes: &[u8]) {
        self.format = format;
        // One loop per format, so that the block loop has no branch and vectorizes.
        match format {
            QuantFormat::Q4_0 => self.load_blocks::<18>(slot, bytes, |block, codes| nibbles(&block[2..18], codes)),
            QuantFormat::Q4_1 => self.load_blocks::<20>(slot, bytes, |block, codes| nibbles(&block[4..20], codes)),
            QuantFormat::Q5_0 => self.load_blocks::<22>(slot, bytes, |block, codes| {
                nibbles(&block[6..22], codes);
                fifth_bits(block[2..6].try_into().expect("4 high-bit bytes"), codes);
            }),
            QuantFormat::Q8_0 => {
                self.load_blocks::<34>(slot, bytes, |block, codes| codes.copy_from_slice(&block[2..34]))
            }
            QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q6K => unreachable!("not a 32-block format"),
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
fn fifth_bits(qh: &[u8; 4], codes: &mut [u8; 32]) {
    for (codes, &byte) in codes.chunks_exact_mut(8).zip(qh) {
        let low = u64::from_le_bytes(codes.try_into().expect("8 codes"));
        codes.copy_from_slice(&(low | (bits_to_bytes(byte) << 4)).to_le_bytes());
    }
}

/// The bits of `b` as eight bytes of 0 or 1 (bit i → byte i), without branches: a nibble times
/// 0x204081 puts its bit i at bit 8i, and the four shifted copies never overlap (so never carry).
#[inline(always)]
fn bits_to_bytes(b: u8) -> u64 {
    let spread = |nibble: u8| (u64::from(nibble) * 0x0020_4081) & 0x0101_0101;
    spread(b & 0x0f) | (spread(b >> 4) << 32)
}

impl Rows256 {
    /// Room for `rows` rows of `k` weights.
    pub(crate) fn new(rows: usize, k: usize) -> Self {
        let (subs, supers) = (rows * k / 16, rows * k / 256);
        Self {
            k,
            format: QuantFormat::Q6K,
            codes: vec![0; rows * k],
            scale16: vec![0; subs],
            min16: vec![0; subs],
            d: vec![0.0; supers],
            dmin: vec![0.0; supers],
        }
    }

    /// The format of the rows last loaded.
    pub(crate) fn format(&self) -> QuantFormat {
        self.format
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

    /// Unpacks super-blocks of `B` bytes: `unpack` writes one's codes, scales and minimums.
    #[inline(always)]
    fn load_blocks<const B: usize>(
        &mut self,
        slot: usize,
        bytes: &[u8],
        unpack: impl Fn(&[u8; B], &mut [u8; 256], &mut [i16; 16], &mut [i16; 16]),
    ) {
        let (k, subs, supers) = (self.k, self.k / 16, self.k / 256);
        let codes = self.codes[slot * k..][..k].chunks_exact_mut(256);
        let scales = self.scale16[slot * subs..][..subs].chunks_exact_mut(16);
        let mins = self.min16[slot * subs..][..subs].chunks_exact_mut(16);
        for (((block, codes), scale16), min16) in bytes.chunks_exact(B).zip(codes).zip(scales).zip(mins) {
            unpack(
                block.try_into().expect("one super-block"),
                codes.try_into().expect("256 codes"),
                scale16.try_into().expect("16 scales"),
                min16.try_into().expect("16 minimums"),
            );
        }
        // d and dmin: Q6_K's d is at its end and it has no dmin (its minimum is the zero point).
        let (d, dmin) = (&mut self.d[slot * supers..][..supers], &mut self.dmin[slot * supers..][..supers]);
        match self.format {
            QuantFormat::Q6K => {
                f16_column(bytes, B, 208, d);
                dmin.fill(0.0);
            }
            _ => {
                f16_column(bytes, B, 0, d);
                f16_column(bytes, B, 2, dmin);
                dmin.iter_mut().for_each(|m| *m = -*m);
            }
        }
    }

    /// Decodes one row's GGUF bytes (`k / 256` super-blocks of `format`) into `slot`.
    pub(crate) fn load(&mut self, slot: usize, format: QuantFormat, bytes: &[u8]) {
        self.format = format;
        // One loop per format, so that the block loop has no branch and vectorizes.
        match format {
            QuantFormat::Q4K => self.load_blocks::<144>(slot, bytes, |block, codes, scale16, min16| {
                k_nibbles(block[16..144].try_into().expect("128 code bytes"), codes);
                scales_mins_k4(block, scale16, min16);
            }),
            QuantFormat::Q5K => self.load_blocks::<176>(slot, bytes, |block, codes, scale16, min16| {
                k_nibbles(block[48..176].try_into().expect("128 code bytes"), codes);
                q5k_fifth_bits(block[16..48].try_into().expect("32 high-bit bytes"), codes);
                scales_mins_k4(block, scale16, min16);
            }),
            QuantFormat::Q6K => self.load_blocks::<210>(slot, bytes, |block, codes, scale16, min16| {
                q6k_codes(
                    block[0..128].try_into().expect("low bits"),
                    block[128..192].try_into().expect("high bits"),
                    codes,
                );
                for j in 0..16 {
                    scale16[j] = i16::from(block[192 + j] as i8);
                    min16[j] = scale16[j];
                }
            }),
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => {
                unreachable!("not a super-block format")
            }
        }
    }
}

/// Q4_K/Q5_K: the eight 6-bit scales and minimums, each repeated for both 16-weight halves of its
/// sub-block.
#[inline(always)]
fn scales_mins_k4(block: &[u8], scale16: &mut [i16; 16], min16: &mut [i16; 16]) {
    let packed: &[u8; 12] = block[4..16].try_into().expect("12 scale bytes");
    for j in 0..8 {
        let (scale, min) = scale_min_k4(j, packed);
        scale16[2 * j] = i16::from(scale);
        scale16[2 * j + 1] = i16::from(scale);
        min16[2 * j] = i16::from(min);
        min16[2 * j + 1] = i16::from(min);
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
fn k_nibbles(qs: &[u8; 128], codes: &mut [u8; 256]) {
    for c in 0..4 {
        for l in 0..32 {
            codes[64 * c + l] = qs[32 * c + l] & 0x0f;
            codes[64 * c + 32 + l] = qs[32 * c + l] >> 4;
        }
    }
}

/// Q5_K's fifth bits: bit `i` of `qh[l]` belongs to weight `32 i + l`.
#[inline(always)]
fn q5k_fifth_bits(qh: &[u8; 32], codes: &mut [u8; 256]) {
    for i in 0..8 {
        for l in 0..32 {
            codes[32 * i + l] |= ((qh[l] >> i) & 1) << 4;
        }
    }
}

/// Q6_K codes: each half of 128 weights takes 64 bytes of low nibbles and 32 bytes of high 2-bit pairs;
/// weight `32 q + l` of the half gets nibble `l` (q even) or `l + 32` (q odd) of the low bytes, low
/// nibble for q < 2, and bits `2 q, 2 q + 1` of high byte `l`.
#[inline(always)]
fn q6k_codes(ql: &[u8; 128], qh: &[u8; 64], codes: &mut [u8; 256]) {
    for h in 0..2 {
        for l in 0..32 {
            let (lo, hi, high) = (ql[64 * h + l], ql[64 * h + l + 32], qh[32 * h + l]);
            codes[128 * h + l] = (lo & 0x0f) | ((high & 3) << 4);
            codes[128 * h + l + 32] = (hi & 0x0f) | (((high >> 2) & 3) << 4);
            codes[128 * h + l + 64] = (lo >> 4) | (((high >> 4) & 3) << 4);
            codes[128 * h + l + 96] = (hi >> 4) | (((high >> 6) & 3) << 4);
        }
    }
}
