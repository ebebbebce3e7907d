//! The weights' in-memory layout, made once at load from the GGUF blocks (which are then dropped):
//! rows interleaved in groups of [`LANES`] so that each SIMD lane holds a different output row, block
//! parameters converted to f32 (and K-quant sub-block scales to i16), codes arranged for the kernels'
//! 32-byte loads. A step then streams every weight once, with no per-tile conversion, and the
//! kernels need no horizontal sums: lane `r` of every vector belongs to row `r` of the group.
//!
//! Group `g` holds rows `8g..8g + 8` (a short last group repeats the matrix's last row) as one record
//! per unit (a block of 32 weights, or a super-block of 256), each record in this order:
//! - `floats` arrays of 8 f32, one value per row: 32-block formats the scale and Q4_1's minimum;
//!   K-quants the super-block scale `d` and the multiplier `dm` of the corrections (below);
//! - K-quants: `subs` arrays of 8 i16, the sub-block scales (sub-blocks of 32; Q6_K's of 16);
//! - K-quants: `subs / 2` arrays of 8 (i16, i16) pairs: each row's corrections `c` of sub-blocks
//!   `2t` and `2t + 1`, in the order `vpmaddwd` wants them;
//! - the codes, 32 bytes per "chunk": codes `4q..4q + 4` of the unit ("group q") of the 8 rows, byte
//!   `4r + e` for row r's code `4q + e`. Chunk q is group q (Q8_0, Q6_K), except for the formats of 4
//!   and 5 bits, whose chunk c holds group c in its low nibbles and group `c + G/2` in its high ones (G
//!   groups per unit); Q5_0 and Q5_K follow them with bit planes: plane p (32 bytes) holds bit 4 of
//!   the codes of groups `8p..8p + 8`, bit `q % 8` of byte `4r + e` for row r's code `4q + e`.
//!
//! The weights: 32-block formats `w = scale * (code - zero) + min` (Q8_0: signed codes, no zero);
//! K-quants `w = d * s_j * code + dm * c_j`, with `c_j` the sub-block minimum and `dm = -dmin` for
//! Q4_K and Q5_K, and `c_j = 32 s_j`, `dm = -d` for Q6_K (its zero point 32). The records are 6–20%
//! larger than the GGUF blocks (f32 parameters), Q6_K's 1.56× (a byte per code).

use crate::format::Family;
use crate::unpack::{Rows256, Rows32};
use crate::QuantFormat;

/// Rows per group: the lanes of a 256-bit vector of f32 or i32.
pub(crate) const LANES: usize = 8;
/// Bytes of one chunk of codes (and of one array of 8 f32).
const CHUNK: usize = 32;

/// Where things sit in a format's records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Weights per unit: 32 or 256.
    pub(crate) unit: usize,
    /// f32 arrays at the start of the record.
    floats: usize,
    /// K-quants: sub-blocks per super-block (0 for the 32-block formats).
    pub(crate) subs: usize,
    /// Two codes per byte.
    pub(crate) nibbles: bool,
    /// Bit planes of fifth bits after the nibbles.
    pub(crate) planes: bool,
    /// Bytes per record.
    pub(crate) record: usize,
}

impl Geometry {
    pub(crate) const fn of(format: QuantFormat) -> Self {
        let (unit, floats, subs, nibbles, planes) = match format {
            QuantFormat::Q4_0 => (32, 1, 0, true, false),
            QuantFormat::Q4_1 => (32, 2, 0, true, false),
            QuantFormat::Q5_0 => (32, 1, 0, true, true),
            QuantFormat::Q8_0 => (32, 1, 0, false, false),
            QuantFormat::Q4K => (256, 2, 8, true, false),
            QuantFormat::Q5K => (256, 2, 8, true, true),
            QuantFormat::Q6K => (256, 2, 16, false, false),
        };
        let codes = LANES * unit / if nibbles { 2 } else { 1 } + if planes { unit } else { 0 };
        let record = floats * CHUNK + subs * 2 * LANES + subs / 2 * CHUNK + codes;
        Self { unit, floats, subs, nibbles, planes, record }
    }

    /// Weights per sub-block (K-quants).
    pub(crate) const fn sub_len(self) -> usize {
        self.unit / self.subs
    }

    /// Offset of the sub-block scales (K-quants).
    pub(crate) const fn scales_at(self) -> usize {
        self.floats * CHUNK
    }

    /// Offset of the correction pairs (K-quants).
    pub(crate) const fn corr_at(self) -> usize {
        self.scales_at() + self.subs * 2 * LANES
    }

    /// Offset of the codes.
    pub(crate) const fn codes_at(self) -> usize {
        self.corr_at() + self.subs / 2 * CHUNK
    }

    /// Offset of the bit planes (Q5_0, Q5_K), from the codes.
    pub(crate) const fn planes_at(self) -> usize {
        LANES * self.unit / 2
    }

    /// Byte of the codes holding row `r`'s code `i` of the unit (or its low four bits), and the
    /// shift that brings it down.
    #[inline(always)]
    fn code_byte(self, r: usize, i: usize) -> (usize, u32) {
        let (q, e) = (i / 4, i % 4);
        let half = self.unit / 8;
        match self.nibbles {
            true => (CHUNK * (q % half) + 4 * r + e, 4 * (q / half) as u32),
            false => (CHUNK * q + 4 * r + e, 0),
        }
    }

    /// Byte of the codes holding row `r`'s fifth bit of code `i` (Q5_0, Q5_K), and its bit.
    #[inline(always)]
    fn plane_bit(self, r: usize, i: usize) -> (usize, u32) {
        let (q, e) = (i / 4, i % 4);
        (self.planes_at() + CHUNK * (q / 8) + 4 * r + e, (q % 8) as u32)
    }
}

/// One record, read value by value: the scalar path and row dequantization use it (the SIMD paths
/// load whole arrays at the same offsets).
#[derive(Clone, Copy)]
pub(crate) struct Record<'a> {
    geo: Geometry,
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    fn new(geo: Geometry, bytes: &'a [u8]) -> Self {
        Self { geo, bytes }
    }

    /// The record's bytes (the SIMD paths load whole arrays from them).
    pub(crate) fn bytes(self) -> &'a [u8] {
        self.bytes
    }

    /// Row `r`'s value of f32 array `a`.
    pub(crate) fn float(self, a: usize, r: usize) -> f32 {
        f32::from_le_bytes(self.bytes[a * CHUNK + 4 * r..][..4].try_into().expect("4 bytes"))
    }

    fn i16_at(self, at: usize) -> i32 {
        i32::from(i16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]))
    }

    /// Row `r`'s scale of sub-block `j`.
    pub(crate) fn scale(self, j: usize, r: usize) -> i32 {
        self.i16_at(self.geo.scales_at() + 2 * (LANES * j + r))
    }

    /// Row `r`'s correction of sub-block `j`.
    pub(crate) fn corr(self, j: usize, r: usize) -> i32 {
        self.i16_at(self.geo.corr_at() + CHUNK * (j / 2) + 4 * r + 2 * (j % 2))
    }

    /// Row `r`'s code `i` (Q8_0's signed).
    pub(crate) fn code(self, format: QuantFormat, r: usize, i: usize) -> i32 {
        let codes = &self.bytes[self.geo.codes_at()..];
        let (at, shift) = self.geo.code_byte(r, i);
        let code = match (format.signed_codes(), self.geo.nibbles) {
            (true, _) => i32::from(codes[at] as i8),
            (false, true) => i32::from((codes[at] >> shift) & 0x0f),
            (false, false) => i32::from(codes[at]),
        };
        match self.geo.planes {
            true => {
                let (at, bit) = self.geo.plane_bit(r, i);
                code | i32::from((codes[at] >> bit) & 1) << 4
            }
            false => code,
        }
    }
}

/// A matrix's groups of records.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    format: QuantFormat,
    geo: Geometry,
    units: usize,
    bytes: Box<[u8]>,
}

/// The records of one group of rows, what a tile kernel reads.
#[derive(Clone, Copy)]
pub(crate) struct Group<'a> {
    pub(crate) format: QuantFormat,
    pub(crate) geo: Geometry,
    /// One record per unit.
    pub(crate) bytes: &'a [u8],
}

impl<'a> Group<'a> {
    /// Units (blocks or super-blocks) per row.
    pub(crate) fn units(self) -> usize {
        self.bytes.len() / self.geo.record
    }

    /// The record of unit `u`.
    pub(crate) fn record(self, u: usize) -> Record<'a> {
        Record::new(self.geo, &self.bytes[u * self.geo.record..][..self.geo.record])
    }
}

impl Packed {
    /// Repacks `rows` rows of `cols` weights from `gguf`, the format's blocks row after row (the
    /// caller has checked the sizes).
    pub(crate) fn new(format: QuantFormat, rows: usize, cols: usize, gguf: &[u8]) -> Self {
        let geo = Geometry::of(format);
        let units = cols / geo.unit;
        let row_len = units * format.block_bytes();
        let group_len = units * geo.record;
        let mut bytes = vec![0u8; rows.div_ceil(LANES) * group_len];
        let row = |r: usize| &gguf[r.min(rows - 1) * row_len..][..row_len];
        match format.family() {
            Family::Blocks32 => {
                let mut decoded = Rows32::new(LANES, cols);
                for (g, group) in bytes.chunks_exact_mut(group_len).enumerate() {
                    (0..LANES).for_each(|lane| decoded.load(lane, format, row(LANES * g + lane)));
                    for (b, record) in group.chunks_exact_mut(geo.record).enumerate() {
                        write_record32(geo, &decoded, b, record);
                    }
                }
            }
            Family::Super256 => {
                let mut decoded = Rows256::new(LANES, cols);
                for (g, group) in bytes.chunks_exact_mut(group_len).enumerate() {
                    (0..LANES).for_each(|lane| decoded.load(lane, format, row(LANES * g + lane)));
                    for (s, record) in group.chunks_exact_mut(geo.record).enumerate() {
                        write_record256(geo, &decoded, s, record);
                    }
                }
            }
        }
        Self { format, geo, units, bytes: bytes.into_boxed_slice() }
    }

    /// Which kernels multiply it.
    pub(crate) fn family(&self) -> Family {
        self.format.family()
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Group `g` (rows `8g..8g + 8`).
    pub(crate) fn group(&self, g: usize) -> Group<'_> {
        let len = self.units * self.geo.record;
        Group { format: self.format, geo: self.geo, bytes: &self.bytes[g * len..][..len] }
    }

    /// The f32 weights of `row` (`out` has the matrix's columns).
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (group, r) = (self.group(row / LANES), row % LANES);
        let (format, geo) = (self.format, self.geo);
        for (u, out) in out.chunks_exact_mut(geo.unit).enumerate() {
            let rec = group.record(u);
            for (i, w) in out.iter_mut().enumerate() {
                let code = rec.code(format, r, i);
                *w = match (format.family(), format.has_min()) {
                    (Family::Blocks32, false) => rec.float(0, r) * (code - format.zero_point()) as f32,
                    (Family::Blocks32, true) => rec.float(0, r) * code as f32 + rec.float(1, r),
                    (Family::Super256, has_min) => {
                        let j = i / geo.sub_len();
                        let ds = rec.float(0, r) * rec.scale(j, r) as f32;
                        match has_min {
                            true => ds * code as f32 + rec.float(1, r) * rec.corr(j, r) as f32,
                            false => ds * (code - format.zero_point()) as f32,
                        }
                    }
                };
            }
        }
    }
}

/// Puts row `lane`'s code `i` of a unit into `codes` (zeroed beforehand).
fn put_code(geo: Geometry, codes: &mut [u8], lane: usize, i: usize, code: u8) {
    let (at, shift) = geo.code_byte(lane, i);
    match geo.planes {
        true => {
            codes[at] |= (code & 0x0f) << shift;
            let (at, bit) = geo.plane_bit(lane, i);
            codes[at] |= (code >> 4) << bit;
        }
        false => codes[at] |= code << shift,
    }
}

fn put_f32(record: &mut [u8], a: usize, lane: usize, v: f32) {
    record[a * CHUNK + 4 * lane..][..4].copy_from_slice(&v.to_le_bytes());
}

fn put_i16(record: &mut [u8], at: usize, v: i16) {
    record[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Block `b` of the 8 decoded rows.
fn write_record32(geo: Geometry, rows: &Rows32, b: usize, record: &mut [u8]) {
    for lane in 0..LANES {
        put_f32(record, 0, lane, rows.scale(lane)[b]);
        if geo.floats > 1 {
            put_f32(record, 1, lane, rows.min(lane)[b]);
        }
        let codes = &rows.codes(lane)[32 * b..][..32];
        for (i, &code) in codes.iter().enumerate() {
            put_code(geo, &mut record[geo.codes_at()..], lane, i, code);
        }
    }
}

/// Super-block `s` of the 8 decoded rows (whose scales and minimums are per 16 weights).
fn write_record256(geo: Geometry, rows: &Rows256, s: usize, record: &mut [u8]) {
    let per16 = geo.sub_len() / 16;
    let q6k = rows.format() == QuantFormat::Q6K;
    for lane in 0..LANES {
        let d = rows.d(lane)[s];
        put_f32(record, 0, lane, d);
        put_f32(record, 1, lane, if q6k { -d } else { rows.dmin(lane)[s] });
        for j in 0..geo.subs {
            let scale = rows.scale16(lane)[16 * s + per16 * j];
            let corr = if q6k { 32 * scale } else { rows.min16(lane)[16 * s + per16 * j] };
            put_i16(record, geo.scales_at() + 2 * (LANES * j + lane), scale);
            put_i16(record, geo.corr_at() + CHUNK * (j / 2) + 4 * lane + 2 * (j % 2), corr);
        }
        let codes = &rows.codes(lane)[256 * s..][..256];
        for (i, &code) in codes.iter().enumerate() {
            put_code(geo, &mut record[geo.codes_at()..], lane, i, code);
        }
    }
}
