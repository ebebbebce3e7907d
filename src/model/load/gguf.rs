//! A GGUF file, opened and checked before anything is built from it: the header and metadata parse,
//! every tensor's bytes lie inside the file, every weight type is one bodega can multiply with.
//! Errors name the file and the problem ("truncated", "not a GGUF file"), never a parser's internals.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where a GGUF's bytes come from: the file on disk, or a generator (synthetic models).
pub trait GgufBytes: Read + Seek + Send {}
impl<T: Read + Seek + Send> GgufBytes for T {}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: Box<dyn GgufBytes>,
}

impl GgufFile {
    /// Opens `path`, parses the header and checks that every tensor's data is present.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io { path: path.to_path_buf(), source };
        let bad = |reason: String| Error::BadGguf { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(io_err)?;
        let file_size = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(bad("not a GGUF file (no GGUF magic at the start)".into()));
        }
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let content = Content::read(&mut reader).map_err(|e| header_error(&e.to_string(), path))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(bad(format!(
                    "tensor '{name}' has {elems} elements, not a multiple of its block size {block}"
                )));
            }
            let end = content.tensor_data_offset + info.offset + (elems / block * info.ggml_dtype.type_size()) as u64;
            if end > file_size {
                return Err(bad(format!(
                    "truncated: tensor '{name}' ends at byte {end} but the file has {file_size} bytes"
                )));
            }
        }
        Ok(Self { path: path.to_path_buf(), content, reader: Box::new(reader) })
    }

    /// A GGUF from parsed contents and a source of tensor bytes (offsets relative to
    /// `content.tensor_data_offset`); `path` names it in messages.
    pub fn from_parts(path: PathBuf, content: Content, reader: Box<dyn GgufBytes>) -> Self {
        Self { path, content, reader }
    }

    /// Where it was read from, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
    }

    /// A metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.required(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| Error::Metadata(format!("`{key}` is not a string")))
    }

    /// A required unsigned integer value (any integer width).
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| missing(key))
    }

    /// An optional unsigned integer value.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| value_to_usize(v).ok_or_else(|| wrong_type(key, "an integer"))).transpose()
    }

    /// An optional float value.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                other => value_to_usize(other).map(|x| x as f32).ok_or_else(|| wrong_type(key, "a number")),
            })
            .transpose()
    }

    /// An optional boolean value.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.to_bool().map_err(|_| wrong_type(key, "a boolean"))).transpose()
    }

    /// An optional array of strings.
    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.opt_array(key, "strings", |x| x.to_string().ok().cloned())
    }

    /// An optional array of numbers, as f32.
    pub fn opt_f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.opt_array(key, "numbers", |x| match x {
            Value::F32(f) => Some(*f),
            other => value_to_usize(other).map(|i| i as f32),
        })
    }

    /// An optional array of integers.
    pub fn opt_usizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.opt_array(key, "integers", value_to_usize)
    }

    /// An optional array whose every element `convert` accepts.
    fn opt_array<T>(&self, key: &str, what: &str, convert: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let arr = v.to_vec().map_err(|_| wrong_type(key, "an array"))?;
        arr.iter()
            .map(|x| convert(x).ok_or_else(|| wrong_type(key, &format!("an array of {what}"))))
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Whether every quantized tensor is of a type bodega's CPU kernels read (the others run on
    /// candle's kernels and its thread pool).
    pub fn quantized_on_bodega_kernels(&self) -> bool {
        let unquantized = [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16];
        self.content
            .tensor_infos
            .values()
            .all(|info| unquantized.contains(&info.ggml_dtype) || crate::ops::bodega_kernels_read(info.ggml_dtype))
    }

    /// The weight type holding most of the file's bytes (`Q4_K`, `F16`, ...): what a report calls the
    /// model's quantization.
    pub fn main_weight_type(&self) -> Option<String> {
        let mut bytes: Vec<(GgmlDType, usize)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            let size = tensor_bytes(info);
            match bytes.iter_mut().find(|(t, _)| *t == info.ggml_dtype) {
                Some((_, total)) => *total += size,
                None => bytes.push((info.ggml_dtype, size)),
            }
        }
        let (dtype, _) = bytes.into_iter().max_by_key(|&(_, size)| size)?;
        let name = format!("{dtype:?}");
        // candle spells the k-quants Q4K; GGUF tools say Q4_K.
        Some(match name.strip_suffix('K') {
            Some(head) if head.starts_with('Q') => format!("{head}_K"),
            _ => name,
        })
    }

    /// Elements in all tensors of this file: the model's parameter count (a split model's is the sum
    /// over its parts), as model listings show it.
    pub fn parameter_count(&self) -> u64 {
        self.content.tensor_infos.values().map(|info| info.shape.elem_count() as u64).sum()
    }

    /// Bytes of all tensors in this file: what loading the weights takes, known before loading them.
    pub fn weight_bytes(&self) -> u64 {
        self.content.tensor_infos.values().map(|info| tensor_bytes(info) as u64).sum()
    }

    /// Whether the file has a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor onto `device`, checking that its weight type is one bodega computes with.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::Metadata(format!("tensor '{name}' is missing from {}", self.path.display())))?;
        if matches!(info.ggml_dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
            return Err(Error::UnsupportedWeightType(format!("{:?} in tensor '{name}'", info.ggml_dtype)));
        }
        Ok(self.content.tensor(&mut self.reader, name, device)?)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| missing(key))
    }
}

fn missing(key: &str) -> Error {
    Error::Metadata(format!("required key `{key}` is missing"))
}

fn wrong_type(key: &str, expected: &str) -> Error {
    Error::Metadata(format!("`{key}` is not {expected}"))
}

fn value_to_usize(v: &Value) -> Option<usize> {
    match *v {
        Value::U8(x) => Some(x as usize),
        Value::U16(x) => Some(x as usize),
        Value::U32(x) => Some(x as usize),
        Value::U64(x) => usize::try_from(x).ok(),
        Value::I8(x) => usize::try_from(x).ok(),
        Value::I16(x) => usize::try_from(x).ok(),
        Value::I32(x) => usize::try_from(x).ok(),
        Value::I64(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

/// Maps the parser's message for a header it could not read to one a user understands.
fn header_error(message: &str, path: &Path) -> Error {
    if let Some(rest) = message.strip_prefix("unknown dtype for tensor ") {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return Error::UnsupportedWeightType(ggml_type_name(digits.parse().unwrap_or(u32::MAX)));
    }
    let reason = if message.contains("failed to fill whole buffer") || message.contains("remaining") {
        format!("truncated or damaged GGUF header ({message})")
    } else {
        format!("unreadable GGUF header: {message}")
    };
    Error::BadGguf { path: path.to_path_buf(), reason }
}

/// GGML's names for the weight types candle cannot read, so that the error says what the file has.
fn ggml_type_name(code: u32) -> String {
    let name = match code {
        4 | 5 => "Q4_2/Q4_3 (removed from GGML)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("ggml type {code}"),
    };
    format!("{name} (ggml type {code})")
}

/// Bytes of one tensor's data.
fn tensor_bytes(info: &candle_core::quantized::gguf_file::TensorInfo) -> usize {
    info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
}

impl super::WeightSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }

    fn matrix(&mut self, name: &str, device: &Device) -> Result<super::Matrix> {
        let dense = match self.content.tensor_infos.get(name).map(|info| info.ggml_dtype) {
            Some(GgmlDType::F32) => Some(DType::F32),
            Some(GgmlDType::F16) => Some(DType::F16),
            Some(GgmlDType::BF16) => Some(DType::BF16),
            _ => None,
        };
        Ok(match dense {
            // The stored bytes are the values; read on the host, they go to the device in their own
            // type (candle cannot dequantize F16/BF16 on a GPU, and widening would double them).
            Some(dtype) => {
                let t = self.tensor(name, &Device::Cpu)?;
                super::Matrix::Dense(candle_core::Tensor::from_raw_buffer(&t.data()?, dtype, t.shape().dims(), device)?)
            }
            None => super::Matrix::Quantized(Box::new(self.tensor(name, device)?)),
        })
    }

    fn vector(&mut self, name: &str, device: &Device) -> Result<candle_core::Tensor> {
        Ok(self.tensor(name, device)?.dequantize(device)?)
    }
}
