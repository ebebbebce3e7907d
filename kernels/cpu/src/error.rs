//! What the kernels refuse. Written by hand (no `thiserror`) to keep the crate dependency-free.

use crate::QuantFormat;
use std::fmt;

/// A matrix or call the kernels cannot run, each naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The number of columns is not a whole number of the format's blocks.
    Columns {
        /// The weights' format.
        format: QuantFormat,
        /// Columns asked for.
        cols: usize,
    },
    /// The byte buffer does not hold exactly `rows` rows of `cols` columns.
    Size {
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The activations or the output do not have the matrix's shape for `m` rows.
    Shape(String),
    /// A kernel path this CPU cannot run, or a `BODEGA_CPU_KERNEL` value that names none.
    Path(String),
    /// The thread count was set after the pool had started.
    PoolStarted,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Columns { format, cols } => {
                write!(f, "{cols} columns are not a whole number of {format} blocks of {}", format.block_len())
            }
            Error::Size { expected, actual } => {
                write!(f, "quantized matrix needs {expected} bytes, got {actual}")
            }
            Error::Shape(what) => write!(f, "quantized matmul: {what}"),
            Error::Path(what) => write!(f, "CPU kernel path: {what}"),
            Error::PoolStarted => write!(f, "the CPU kernel thread pool has already started"),
        }
    }
}

impl std::error::Error for Error {}
