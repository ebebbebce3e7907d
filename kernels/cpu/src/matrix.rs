//! The public weight matrix: GGUF bytes owned once, validated once, multiplied by any path.

use crate::format::Family;
use crate::kernel::KernelPath;
use crate::unpack::{Rows256, Rows32, Unpacked};
use crate::{matmul, Error, QuantFormat};

/// A quantized weight matrix of `rows` × `cols` (`[N, K]`, one output per row), stored as the GGUF
/// blocks of each row in order. It owns the only copy of the bytes; nothing is dequantized ahead.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    bytes: Box<[u8]>,
}

impl QuantMatrix {
    /// Takes `bytes` as `rows` rows of `cols` weights in `format`'s block layout.
    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self, Error> {
        if cols == 0 || !cols.is_multiple_of(format.block_len()) {
            return Err(Error::Columns { format, cols });
        }
        let expected = rows * cols / format.block_len() * format.block_bytes();
        if bytes.len() != expected {
            return Err(Error::Size { expected, actual: bytes.len() });
        }
        Ok(Self { format, rows, cols, bytes: bytes.into_boxed_slice() })
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

    /// The GGUF bytes, row after row.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The GGUF bytes of row `row`.
    pub(crate) fn row_bytes(&self, row: usize) -> &[u8] {
        let len = self.cols / self.format.block_len() * self.format.block_bytes();
        &self.bytes[row * len..][..len]
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
        matmul::run(self, path, x, m, out);
        Ok(())
    }

    /// The f32 weights of row `row` (`out` has `cols` values): for embedding lookups, and the
    /// definition the kernels are tested against.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), Error> {
        if row >= self.rows || out.len() != self.cols {
            return Err(Error::Shape(format!("row {row} of {} into {} values", self.rows, out.len())));
        }
        match self.format.family() {
            Family::Blocks32 => dequantize::<Rows32>(self, row, out),
            Family::Super256 => dequantize::<Rows256>(self, row, out),
        }
        Ok(())
    }
}

fn dequantize<U: Unpacked>(matrix: &QuantMatrix, row: usize, out: &mut [f32]) {
    let mut unpacked = U::new(1, matrix.cols);
    unpacked.load(0, matrix.format, matrix.row_bytes(row));
    unpacked.dequantize(0, out);
}
