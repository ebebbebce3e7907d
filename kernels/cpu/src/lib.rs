//! bodega's CPU quantized matmul. Weights stay in their GGUF block layout; activations are quantized
//! to 8 bits once per call; each weight block is unpacked once and multiplied against several
//! activation rows held in registers (scalar, AVX2, AVX-512 VNNI and NEON dotprod paths, chosen at run
//! time); a persistent thread pool splits the weight rows.
//!
//! Batch invariance: on a given kernel path, output element (m, n) runs the same arithmetic in the
//! same order whatever the number of rows and wherever row m lands in a tile, so a sequence's logits do
//! not depend on what else is in the step.
//!
//! The crate has no dependencies so that it cross-compiles in seconds (CI runs the NEON path under
//! qemu without building the rest of bodega).

mod acts;
mod error;
mod f16;
mod format;
mod kernel;
mod matmul;
mod matrix;
mod pool;
mod unpack;

pub use error::Error;
pub use format::QuantFormat;
pub use kernel::KernelPath;
pub use matrix::QuantMatrix;
pub use pool::{set_threads, threads};
