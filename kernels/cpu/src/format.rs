//! The GGUF block formats the kernels read, and the two ways they are multiplied.

use std::fmt;

/// A GGUF quantization format, read in place from its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 32 weights: f16 scale, 4-bit codes; `w = d * (q - 8)`.
    Q4_0,
    /// 32 weights: f16 scale and minimum, 4-bit codes; `w = d * q + m`.
    Q4_1,
    /// 32 weights: f16 scale, 5-bit codes (high bits packed apart); `w = d * (q - 16)`.
    Q5_0,
    /// 32 weights: f16 scale, signed 8-bit codes; `w = d * q`.
    Q8_0,
    /// 256 weights: f16 scale and minimum, 8 sub-blocks with 6-bit scales and minimums, 4-bit codes.
    Q4K,
    /// Q4_K with a fifth bit per code.
    Q5K,
    /// 256 weights: f16 scale, 16 sub-blocks with 8-bit scales, 6-bit codes; `w = d * s * (q - 32)`.
    Q6K,
}

/// How a format is multiplied: blocks of 32 with a float scale each (activations quantized by 32), or
/// super-blocks of 256 with small integer sub-block scales (activations quantized by 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Blocks32,
    Super256,
}

impl QuantFormat {
    /// Every format, for tests and tools that cover them all.
    pub const ALL: [QuantFormat; 7] = [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q8_0, Self::Q4K, Self::Q5K, Self::Q6K];

    /// Weights per block: a row's length must be a multiple of it.
    pub const fn block_len(self) -> usize {
        match self.family() {
            Family::Blocks32 => 32,
            Family::Super256 => 256,
        }
    }

    /// Bytes per block in the GGUF layout.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// The name GGUF tools print.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    pub(crate) const fn family(self) -> Family {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => Family::Blocks32,
            Self::Q4K | Self::Q5K | Self::Q6K => Family::Super256,
        }
    }

    /// Whether codes are signed bytes (Q8_0) rather than small unsigned ones: the x86 kernels
    /// multiply the two kinds differently.
    pub(crate) const fn signed_codes(self) -> bool {
        matches!(self, Self::Q8_0)
    }

    /// The integer every code is taken from (`w ∝ code - zero`), subtracted exactly in the integer
    /// dot products through the activations' block sums.
    pub(crate) const fn zero_point(self) -> i32 {
        match self {
            Self::Q4_0 => 8,
            Self::Q5_0 => 16,
            Self::Q6K => 32,
            _ => 0,
        }
    }

    /// Whether blocks carry a float minimum added to every weight (Q4_1, Q4_K, Q5_K).
    pub(crate) const fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q4K | Self::Q5K)
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
