//! bodega's CPU quantized matmul. Weights are repacked once at load from their GGUF blocks into
//! groups of 8 interleaved rows with f32 block parameters (no dequantized copy); activations are
//! quantized to 8 bits once per call; each group is multiplied against several activation rows held
//! in registers, one weight row per SIMD lane (scalar, AVX2, AVX-512 VNNI and NEON dotprod paths,
//! chosen at run time); a persistent thread pool splits the groups, and runs other per-step loops
//! of the engine too ([`parallel_for`]).
//!
//! Batch invariance: on a given kernel path, output element (m, n) runs the same arithmetic in the
//! same order whatever the number of rows and wherever row m or weight row n lands in a tile, so a
//! sequence's logits do not depend on what else is in the step.
//!
//! The crate has no dependencies so that it cross-compiles in seconds (CI runs the NEON path under
//! qemu without building the rest of bodega).

mod activation;
mod acts;
mod attention;
mod error;
mod f16;
mod format;
mod kernel;
mod matmul;
mod matrix;
mod packed;
mod pool;
mod unpack;

pub use activation::{gated_activation, Activation};
pub use attention::{attend, PagedRows};
pub use error::Error;
pub use format::QuantFormat;
pub use kernel::KernelPath;
pub use matrix::QuantMatrix;
pub use pool::{parallel_for, set_threads, threads};
