//! The kernel paths (one instruction set each), how the best one is found, and the two tile kernels
//! every path provides: one packed group of 8 weight rows against up to MR quantized activation rows.
//!
//! Batch invariance lives here: within a path, a (weight row, activation row) pair runs the same
//! sequence of operations whatever the tile's row count, so tiles with fewer rows (the last rows of a
//! batch, or M = 1) produce the same bits as full ones.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
mod neon;

use crate::acts::{Acts256, Acts32};
use crate::packed::{Group, LANES};
use crate::Error;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Most activation rows any path's tile takes.
pub(crate) const MAX_MR: usize = 8;

/// How the codes are stored (`packed.rs`), a const parameter of the SIMD bodies: a byte each (Q8_0,
/// Q6_K), ...
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
pub(crate) const BYTES: u8 = 0;
/// ... nibbles (Q4_0, Q4_1, Q4_K), ...
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
pub(crate) const NIBBLES: u8 = 1;
/// ... or nibbles plus planes of fifth bits (Q5_0, Q5_K).
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
pub(crate) const PLANES: u8 = 2;

/// A tile's results, `[activation row][weight row of the group]`.
pub(crate) type TileOut = [[f32; LANES]; MAX_MR];

/// The environment variable that forces a path (`scalar`, `avx2`, `avx512` or `neon`).
pub const KERNEL_ENV: &str = "BODEGA_CPU_KERNEL";

/// An instruction-set path for the kernels. Paths differ in speed and in rounding (not in results
/// beyond float rounding); within one path results are batch invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Portable Rust, the readable reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA: `vpmaddubsw` byte products.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL): twice the registers, so larger tiles; VNNI's `vpdpbusd` and
    /// `vpdpwssd` when the CPU has them.
    Avx512,
    /// AArch64 NEON with the dot-product extension (`sdot`), as on Apple Silicon.
    Neon,
}

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [Self; 4] = [Self::Scalar, Self::Avx2, Self::Avx512, Self::Neon];

    /// The name [`KERNEL_ENV`] takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }

    /// Whether this CPU can run the path (detected at run time, never assumed from the build).
    pub fn is_supported(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => x86::avx2_supported(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => x86::avx512_supported(),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU can run, slowest first: the ones tests should cover.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|p| p.is_supported()).collect()
    }

    /// The fastest path this CPU can run.
    pub fn best() -> Self {
        *Self::available().last().expect("the scalar path is always available")
    }

    /// The path matmuls use: the one [`KERNEL_ENV`] names, else the best. Read once per process;
    /// an unknown or unsupported name is an error rather than a silent fallback.
    pub fn detect() -> Result<Self, Error> {
        static CHOICE: OnceLock<Result<KernelPath, Error>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var(KERNEL_ENV) {
                Ok(name) if !name.is_empty() => {
                    let path: KernelPath = name.parse()?;
                    path.check()?;
                    Ok(path)
                }
                _ => Ok(Self::best()),
            })
            .clone()
    }

    /// An error unless this CPU can run the path.
    pub(crate) fn check(self) -> Result<(), Error> {
        match self.is_supported() {
            true => Ok(()),
            false => Err(Error::Path(format!("this CPU cannot run the {} kernels", self.name()))),
        }
    }

    /// MR: activation rows of a full tile.
    pub(crate) fn tile_rows(self) -> usize {
        match self {
            Self::Scalar => scalar::MR,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => x86::AVX2_MR,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => x86::AVX512_MR,
            #[cfg(target_arch = "aarch64")]
            Self::Neon => neon::MR,
            #[allow(unreachable_patterns)]
            _ => unreachable!("{self:?} is not built for this architecture"),
        }
    }

    /// Rows `m0..m0 + mr` of `acts` against the 8 weight rows of group `w`. The caller has checked
    /// that the path is supported and that `mr` is at most the path's MR.
    pub(crate) fn tile32(self, w: Group, acts: &Acts32, m0: usize, mr: usize) -> TileOut {
        match self {
            Self::Scalar => scalar::tile32(w, acts, m0, mr),
            // SAFETY: the matmul runs only supported paths (`check`).
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { x86::tile32_avx2(w, acts, m0, mr) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { x86::tile32_avx512(w, acts, m0, mr) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            Self::Neon => unsafe { neon::tile32(w, acts, m0, mr) },
            #[allow(unreachable_patterns)]
            _ => unreachable!("{self:?} is not built for this architecture"),
        }
    }

    /// [`tile32`](Self::tile32) for the super-block formats.
    pub(crate) fn tile256(self, w: Group, acts: &Acts256, m0: usize, mr: usize) -> TileOut {
        match self {
            Self::Scalar => scalar::tile256(w, acts, m0, mr),
            // SAFETY: the matmul runs only supported paths (`check`).
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { x86::tile256_avx2(w, acts, m0, mr) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { x86::tile256_avx512(w, acts, m0, mr) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            Self::Neon => unsafe { neon::tile256(w, acts, m0, mr) },
            #[allow(unreachable_patterns)]
            _ => unreachable!("{self:?} is not built for this architecture"),
        }
    }
}

impl FromStr for KernelPath {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|p| p.name()).collect();
            Error::Path(format!("{KERNEL_ENV}={s} names no path (one of: {})", names.join(", ")))
        })
    }
}

/// The path's name, and for AVX-512 whether VNNI is in use.
impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        #[cfg(target_arch = "x86_64")]
        if *self == Self::Avx512 && x86::vnni_supported() {
            f.write_str(" (VNNI)")?;
        }
        Ok(())
    }
}

/// Expands `$body` with the const `$r` set to the tile's activation row count (1..=MAX_MR), so each
/// count is its own instantiation with its accumulators in registers.
macro_rules! with_rows {
    ($mr:expr, |$r:ident| $body:expr) => {
        match $mr {
            1 => {
                const $r: usize = 1;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            6 => {
                const $r: usize = 6;
                $body
            }
            7 => {
                const $r: usize = 7;
                $body
            }
            8 => {
                const $r: usize = 8;
                $body
            }
            other => unreachable!("a tile of {other} activation rows"),
        }
    };
}
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_imports))]
pub(crate) use with_rows;
