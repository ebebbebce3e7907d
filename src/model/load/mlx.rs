//! MLX-quantized matrices (mlx-lm's `affine` mode): `weight` packs `bits`-bit codes into u32 words,
//! lowest bits first along a row; every `group_size` values share a `scale` and a `bias`, and a value is
//! `scale * code + bias`. A 4-bit matrix with groups of 32 or more is Q4_1-shaped (per 32 values an f16
//! scale and an f16 minimum), so it is repacked into Q4_1 blocks, exactly, when every scale and bias is
//! an f16 value; anything else is dequantized (docs/mlx.md lists the cases).

use crate::error::{Error, Result};
use half::f16;
use serde_json::Value;
use std::collections::HashMap;

/// Values per Q4_1 block.
const Q4_1_BLOCK: usize = 32;
/// Bytes per Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;

/// How one matrix is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quant {
    /// Bits per code: 4 or 8.
    pub bits: usize,
    /// Values sharing one scale and bias.
    pub group_size: usize,
}

/// The `quantization` object of an MLX model's `config.json`: a default and per-module overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantization {
    default: Quant,
    overrides: HashMap<String, Option<Quant>>,
}

impl Quantization {
    /// Reads `config.json`'s `quantization`, if the model has one.
    pub fn from_config(json: &Value) -> Result<Option<Self>> {
        let Some(q) = json.get("quantization").filter(|q| q.is_object()) else { return Ok(None) };
        let mode = q.get("mode").and_then(Value::as_str).unwrap_or("affine");
        if mode != "affine" {
            return Err(Error::UnsupportedQuantization(format!(
                "MLX quantization mode '{mode}' (bodega reads MLX affine 4-bit and 8-bit)"
            )));
        }
        let default = parse_quant(q)?.ok_or_else(|| Error::Metadata("MLX quantization without bits".into()))?;
        let mut overrides = HashMap::new();
        for (key, value) in q.as_object().into_iter().flatten() {
            match value {
                Value::Object(_) => overrides.insert(key.clone(), parse_quant(value)?),
                Value::Bool(false) => overrides.insert(key.clone(), None),
                _ => continue,
            };
        }
        Ok(Some(Self { default, overrides }))
    }

    /// The quantization of the module `path` (`model.layers.0.mlp.down_proj`); `None` if unquantized.
    pub fn of(&self, path: &str) -> Option<Quant> {
        self.overrides.get(path).copied().unwrap_or(Some(self.default))
    }

    /// `4-bit g64` (the default; per-layer overrides are not named).
    pub fn describe(&self) -> String {
        format!("{}-bit g{}", self.default.bits, self.default.group_size)
    }
}

fn parse_quant(q: &Value) -> Result<Option<Quant>> {
    let field = |k: &str| q.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let (Some(bits), Some(group_size)) = (field("bits"), field("group_size")) else { return Ok(None) };
    if !matches!(bits, 4 | 8) || group_size == 0 || group_size % (32 / bits) != 0 {
        return Err(Error::UnsupportedQuantization(format!(
            "MLX {bits}-bit with groups of {group_size} (bodega reads MLX affine 4-bit and 8-bit)"
        )));
    }
    Ok(Some(Quant { bits, group_size }))
}

/// One quantized matrix as read from the file, scales and biases widened to f32 (exactly).
pub struct Packed<'a> {
    /// `[rows, cols * bits / 32]` words.
    pub words: &'a [u32],
    /// `[rows, cols / group_size]`.
    pub scales: &'a [f32],
    /// `[rows, cols / group_size]`.
    pub biases: &'a [f32],
    /// Rows of the matrix.
    pub rows: usize,
    /// Columns (values per row).
    pub cols: usize,
    /// Its quantization.
    pub quant: Quant,
}

impl Packed<'_> {
    /// Checks that the arrays have the sizes the shape implies.
    pub fn check(&self) -> Result<()> {
        let Quant { bits, group_size } = self.quant;
        let ok = self.cols.is_multiple_of(group_size)
            && self.words.len() * 32 == self.rows * self.cols * bits
            && self.scales.len() == self.rows * self.cols / group_size
            && self.biases.len() == self.scales.len();
        match ok {
            true => Ok(()),
            false => Err(Error::Metadata(format!(
                "MLX matrix of {}×{} with {bits}-bit groups of {group_size}: packed sizes do not match",
                self.rows, self.cols
            ))),
        }
    }

    /// The code of value `col` of row `row`.
    fn code(&self, row: usize, col: usize) -> u8 {
        let per_word = 32 / self.quant.bits;
        let word = self.words[(row * self.cols + col) / per_word];
        let shift = (col % per_word) * self.quant.bits;
        ((word >> shift) & ((1 << self.quant.bits) - 1)) as u8
    }

    /// Every value as f32, row after row: `scale * code + bias`, as MLX computes it.
    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.cols / self.quant.group_size;
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let g = r * groups + c / self.quant.group_size;
                out.push(self.scales[g] * f32::from(self.code(r, c)) + self.biases[g]);
            }
        }
        out
    }

    /// Q4_1 blocks holding exactly the same values, when the matrix is 4-bit with groups of at least
    /// 32 and every scale and bias is an f16 value; `None` otherwise.
    pub fn to_q4_1(&self) -> Option<Vec<u8>> {
        let exact_f16 = |x: &f32| f16::from_f32(*x).to_f32() == *x;
        if self.quant.bits != 4
            || !self.quant.group_size.is_multiple_of(Q4_1_BLOCK)
            || !self.scales.iter().chain(self.biases).all(exact_f16)
        {
            return None;
        }
        let groups = self.cols / self.quant.group_size;
        let mut out = Vec::with_capacity(self.rows * self.cols / Q4_1_BLOCK * Q4_1_BYTES);
        for r in 0..self.rows {
            for start in (0..self.cols).step_by(Q4_1_BLOCK) {
                let g = r * groups + start / self.quant.group_size;
                out.extend_from_slice(&f16::from_f32(self.scales[g]).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(self.biases[g]).to_le_bytes());
                // Q4_1 puts value j in the low nibble of byte j and value j + 16 in its high nibble.
                out.extend((0..Q4_1_BLOCK / 2).map(|j| self.code(r, start + j) | self.code(r, start + j + 16) << 4));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed<'a>(words: &'a [u32], scales: &'a [f32], biases: &'a [f32], cols: usize, bits: usize) -> Packed<'a> {
        Packed { words, scales, biases, rows: 1, cols, quant: Quant { bits, group_size: cols } }
    }

    #[test]
    fn codes_are_read_lowest_bits_first() {
        let words = [0x7654_3210u32, 0xfedc_ba98, 0, 0];
        let p = packed(&words, &[1.0], &[0.5], 32, 4);
        assert_eq!(&p.dequantize()[..16], &(0..16).map(|c| c as f32 + 0.5).collect::<Vec<_>>()[..]);
        let p = packed(&[0x0403_0201, 0, 0, 0, 0, 0, 0, 0], &[2.0], &[0.0], 32, 8);
        assert_eq!(&p.dequantize()[..5], &[2.0, 4.0, 6.0, 8.0, 0.0]);
    }

    #[test]
    fn scales_outside_f16_are_not_repacked() {
        let words = [0u32; 4];
        assert!(packed(&words, &[1.0], &[0.25], 32, 4).to_q4_1().is_some());
        assert!(packed(&words, &[1e-9], &[0.25], 32, 4).to_q4_1().is_none());
        assert!(packed(&words, &[1.0], &[1e6], 32, 4).to_q4_1().is_none());
    }

    #[test]
    fn unsupported_modes_and_widths_are_named() {
        let e = Quantization::from_config(&serde_json::json!({"quantization": {"bits": 3, "group_size": 64}}));
        assert!(e.unwrap_err().to_string().contains("MLX 3-bit"));
        let e = Quantization::from_config(
            &serde_json::json!({"quantization": {"mode": "mxfp4", "bits": 4, "group_size": 32}}),
        );
        assert!(e.unwrap_err().to_string().contains("mxfp4"));
    }

    #[test]
    fn per_module_overrides_win() {
        let json = serde_json::json!({"quantization": {"bits": 4, "group_size": 64,
            "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 32}, "lm_head": false}});
        let q = Quantization::from_config(&json).unwrap().unwrap();
        assert_eq!(q.of("model.layers.0.mlp.down_proj"), Some(Quant { bits: 8, group_size: 32 }));
        assert_eq!(q.of("lm_head"), None);
        assert_eq!(q.of("model.embed_tokens"), Some(Quant { bits: 4, group_size: 64 }));
    }
}
