//! The public weight matrix: GGUF bytes validated once and repacked once at load, multiplied by any
//! path.

use crate::kernel::KernelPath;
use crate::packed::Packed;
use crate::{matmul, Error, QuantFormat};

/// A quantized weight matrix of `rows` × `cols` (`[N, K]`, one output per row). Built from the GGUF
/// blocks of each row in order, it holds their repacked copy (`packed.rs`: groups of 8 rows, f32
/// block parameters) instead of the GGUF bytes, and nothing dequantized.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    packed: Packed,
}

impl QuantMatrix {
    /// Takes `bytes` as `rows` rows of `cols` weights in `format`'s GGUF block layout and repacks
    /// them (the bytes are dropped).
    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self, Error> {
        if cols == 0 || !cols.is_multiple_of(format.block_len()) {
            return Err(Error::Columns { format, cols });
        }
        let expected = rows * cols / format.block_len() * format.block_bytes();
        if bytes.len() != expected {
            return Err(Error::Size { expected, actual: bytes.len() });
        }
        Ok(Self { format, rows, cols, packed: Packed::new(format, rows, cols, &bytes) })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Rows (N): outputs per activation row.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (K): the length of an activation row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the repacked weights held in memory.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len()
    }

    /// `out = x · Wᵀ` for `m` activation rows: `x` is `[m, cols]`, `out` is `[m, rows]`, both
    /// row-major, on the path [`KernelPath::detect`] picks.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), Error> {
        self.matmul_on(KernelPath::detect()?, x, m, out)
    }

    /// [`matmul`](Self::matmul) on a given path (tests and benchmarks compare paths).
    pub fn matmul_on(&self, path: KernelPath, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), Error> {
        path.check()?;
        if x.len() != m * self.cols || out.len() != m * self.rows {
            return Err(Error::Shape(format!(
                "{} input and {} output values for {m} rows of a {}×{} matrix",
                x.len(),
                out.len(),
                self.rows,
                self.cols
            )));
        }
        matmul::run(&self.packed, (self.rows, self.cols), path, x, m, out);
        Ok(())
    }

    /// The f32 weights of row `row` (`out` has `cols` values): for embedding lookups, and the
    /// definition the kernels are tested against.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), Error> {
        if row >= self.rows || out.len() != self.cols {
            return Err(Error::Shape(format!("row {row} of {} into {} values", self.rows, out.len())));
        }
        self.packed.dequantize_row(row, out);
        Ok(())
    }
}
