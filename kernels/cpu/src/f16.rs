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

/// Eight f16 as f32, in one instruction where F16C is enabled (one at a time, each conversion
/// waits on the previous one through the register it merges into).
#[inline(always)]
fn f16x8_to_f32(h: &[u16; 8]) -> [f32; 8] {
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    // SAFETY: F16C and AVX are enabled for the whole build (cfg above); both pointers cover 8 lanes.
    unsafe {
        use core::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast())));
        out
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    {
        h.map(f16_to_f32)
    }
}

/// The f16 at offset `at` of every `stride`-byte block in `bytes`, as f32, into `out` (one value per
/// block): the scales of a row, converted eight at a time.
#[inline(always)]
pub(crate) fn f16_column(bytes: &[u8], stride: usize, at: usize, out: &mut [f32]) {
    let mut blocks = bytes.chunks_exact(stride);
    let mut groups = out.chunks_exact_mut(8);
    for group in groups.by_ref() {
        let mut halves = [0u16; 8];
        for (h, block) in halves.iter_mut().zip(blocks.by_ref()) {
            *h = u16::from_le_bytes([block[at], block[at + 1]]);
        }
        group.copy_from_slice(&f16x8_to_f32(&halves));
    }
    for (v, block) in groups.into_remainder().iter_mut().zip(blocks) {
        *v = read_f16(block, at);
    }
}

#[cfg(test)]
mod tests {
    use super::{f16_column, f16_to_f32};

    #[test]
    fn columns_convert_every_block() {
        let blocks: Vec<u8> = (0..11u16).flat_map(|i| [0xaa, (0x3c00 + i).to_le_bytes()[0], 0x3c]).collect();
        let mut out = [0.0; 11];
        f16_column(&blocks, 3, 1, &mut out);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, f16_to_f32(0x3c00 + i as u16));
        }
    }

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
