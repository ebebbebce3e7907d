//! Half-precision block scales. GGUF stores them as IEEE binary16 and the crate has no dependency to
//! provide the type; every f16 value is exactly an f32, so any correct conversion gives the same bits.

/// The f32 of an IEEE binary16 bit pattern.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    // SAFETY: the f16c instructions are enabled for the whole build (cfg above).
    unsafe {
        use core::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    {
        let sign = u32::from(h & 0x8000) << 16;
        let rest = u32::from(h & 0x7fff);
        let magnitude = if rest >= 0x7c00 {
            0x7f80_0000 | ((rest & 0x3ff) << 13)
        } else {
            // Shifting puts the exponent and mantissa in f32 position with a bias 112 too small;
            // multiplying by 2^112 fixes the bias for normal and subnormal values alike.
            (f32::from_bits(rest << 13) * f32::from_bits(0x7780_0000)).to_bits()
        };
        f32::from_bits(sign | magnitude)
    }
}

/// The f16 stored little-endian at `bytes[at..at + 2]`, as f32.
#[inline(always)]
pub(crate) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }
}
