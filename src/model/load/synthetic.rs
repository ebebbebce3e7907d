//! Synthetic models for benchmarks: the shape of a named Llama model with random weights of a chosen
//! type and a synthetic vocabulary (byte-level characters, then fillers), so that a GPU machine
//! without the real files can measure speed, which does not depend on weight values. The model is a
//! GGUF description whose tensor bytes are generated on demand as the loader reads them (valid
//! blocks: finite scales, random codes), so the same loader and model code run as for a real file.

use super::gguf::GgufFile;
use crate::error::Result;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::str::FromStr;

/// Hyper-parameters of a Llama-family shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
    tied_embeddings: bool,
}

/// The shapes `--synthetic` knows, from the models' published configurations.
const SHAPES: &[Shape] = &[
    Shape {
        name: "llama-3.2-1b",
        hidden: 2048,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128256,
        tied_embeddings: true,
    },
    Shape {
        name: "llama-3.2-3b",
        hidden: 3072,
        layers: 28,
        heads: 24,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128256,
        tied_embeddings: true,
    },
    Shape {
        name: "llama-3.1-8b",
        hidden: 4096,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        ffn: 14336,
        vocab: 128256,
        tied_embeddings: false,
    },
];

/// Context length written into the synthetic metadata (Llama 3.x's).
const CONTEXT_LENGTH: usize = 131072;
/// RoPE base of Llama 3.x.
const ROPE_BASE: f32 = 500_000.0;

/// A `--synthetic` choice: `NAME[:f16|bf16|q8_0|q4_k]` (F16 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSpec {
    shape: Shape,
    dtype: GgmlDType,
}

impl FromStr for SyntheticSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, dtype) = s.split_once(':').unwrap_or((s, "f16"));
        let names = || SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
        let shape = *SHAPES
            .iter()
            .find(|shape| shape.name == name)
            .ok_or_else(|| format!("no synthetic model '{name}' (known: {})", names()))?;
        let dtype = match dtype.to_ascii_lowercase().as_str() {
            "f16" => GgmlDType::F16,
            "bf16" => GgmlDType::BF16,
            "q8_0" => GgmlDType::Q8_0,
            "q4_k" => GgmlDType::Q4K,
            other => return Err(format!("no synthetic weight type '{other}' (f16, bf16, q8_0, q4_k)")),
        };
        Ok(Self { shape, dtype })
    }
}

impl std::fmt::Display for SyntheticSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dtype = match self.dtype {
            GgmlDType::BF16 => "bf16",
            GgmlDType::Q8_0 => "q8_0",
            GgmlDType::Q4K => "q4_k",
            _ => "f16",
        };
        write!(f, "synthetic:{}:{dtype}", self.shape.name)
    }
}

impl SyntheticSpec {
    /// The model as a GGUF file whose tensor data is generated as it is read.
    pub fn open(&self) -> Result<GgufFile> {
        let s = self.shape;
        let head_dim = s.hidden / s.heads;
        let mut tensors: Vec<(String, GgmlDType, (usize, usize))> = Vec::new();
        let mut matrix = |name: String, rows: usize, cols: usize| tensors.push((name, self.dtype, (rows, cols)));
        matrix("token_embd.weight".into(), s.vocab, s.hidden);
        if !s.tied_embeddings {
            matrix("output.weight".into(), s.vocab, s.hidden);
        }
        for i in 0..s.layers {
            matrix(format!("blk.{i}.attn_q.weight"), s.heads * head_dim, s.hidden);
            matrix(format!("blk.{i}.attn_k.weight"), s.kv_heads * head_dim, s.hidden);
            matrix(format!("blk.{i}.attn_v.weight"), s.kv_heads * head_dim, s.hidden);
            matrix(format!("blk.{i}.attn_output.weight"), s.hidden, s.heads * head_dim);
            matrix(format!("blk.{i}.ffn_gate.weight"), s.ffn, s.hidden);
            matrix(format!("blk.{i}.ffn_up.weight"), s.ffn, s.hidden);
            matrix(format!("blk.{i}.ffn_down.weight"), s.hidden, s.ffn);
        }
        let mut norms = vec!["output_norm.weight".to_string()];
        for i in 0..s.layers {
            norms.push(format!("blk.{i}.attn_norm.weight"));
            norms.push(format!("blk.{i}.ffn_norm.weight"));
        }
        let mut tensor_infos = HashMap::new();
        let mut regions = Vec::new();
        let mut offset = 0u64;
        let all = tensors.into_iter().chain(norms.into_iter().map(|n| (n, GgmlDType::F32, (s.hidden, 0))));
        for (name, dtype, (rows, cols)) in all {
            let shape: candle_core::Shape = if cols == 0 { rows.into() } else { (rows, cols).into() };
            let bytes = (shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64;
            regions.push(Region { start: offset, end: offset + bytes, dtype });
            tensor_infos.insert(name, TensorInfo { ggml_dtype: dtype, shape, offset });
            offset = (offset + bytes).next_multiple_of(32);
        }
        let content = Content {
            magic: VersionedMagic::GgufV3,
            metadata: self.metadata(head_dim),
            tensor_infos,
            tensor_data_offset: 0,
        };
        let reader = RandomWeights { regions, len: offset, pos: 0 };
        Ok(GgufFile::from_parts(self.to_string().into(), content, Box::new(reader)))
    }

    fn metadata(&self, head_dim: usize) -> HashMap<String, Value> {
        let s = self.shape;
        let u32v = |x: usize| Value::U32(x as u32);
        // The 256 byte-level characters first, so that any text encodes (one token per byte, there
        // are no merges) and a bench's decode → re-encode of random prompts round-trips; then fillers.
        let mut alphabet: Vec<char> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        let fillers = (alphabet.len()..s.vocab).map(|i| format!("t{i}"));
        let tokens = alphabet.iter().map(char::to_string).chain(fillers).map(Value::String).collect();
        HashMap::from([
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.name".into(), Value::String(self.to_string())),
            ("llama.embedding_length".into(), u32v(s.hidden)),
            ("llama.block_count".into(), u32v(s.layers)),
            ("llama.attention.head_count".into(), u32v(s.heads)),
            ("llama.attention.head_count_kv".into(), u32v(s.kv_heads)),
            ("llama.attention.key_length".into(), u32v(head_dim)),
            ("llama.feed_forward_length".into(), u32v(s.ffn)),
            ("llama.context_length".into(), u32v(CONTEXT_LENGTH)),
            ("llama.rope.freq_base".into(), Value::F32(ROPE_BASE)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
            ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
            ("tokenizer.ggml.eos_token_id".into(), u32v(s.vocab - 1)),
        ])
    }
}

/// Where one tensor's bytes lie in the virtual file, and their type.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    dtype: GgmlDType,
}

/// The virtual file: every byte is a pure function of its position, so reads in any order agree.
struct RandomWeights {
    regions: Vec<Region>,
    len: u64,
    pos: u64,
}

/// A well-mixed 64-bit hash of a position (SplitMix64's finaliser).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// f16 bits of ≈0.001: the scale of every quantized block.
const SCALE_F16: u16 = 0x1419;

impl Region {
    /// Byte `o` (from the region's start): small finite f16/bf16 values (|x| in 2^-10..2^-4),
    /// ones for the f32 norms, and quantized blocks with fixed small scales and random codes.
    fn byte(&self, o: u64) -> u8 {
        let two_bytes = |bits: u16| bits.to_le_bytes()[(o % 2) as usize];
        match self.dtype {
            GgmlDType::F32 => 1.0f32.to_le_bytes()[(o % 4) as usize],
            GgmlDType::F16 => {
                let h = mix(o / 2 + self.start);
                two_bytes(((h & 1) << 15) as u16 | ((5 + (h >> 1) % 6) << 10) as u16 | ((h >> 8) & 0x3ff) as u16)
            }
            GgmlDType::BF16 => {
                let h = mix(o / 2 + self.start);
                two_bytes(((h & 1) << 15) as u16 | ((117 + (h >> 1) % 6) << 7) as u16 | ((h >> 8) & 0x7f) as u16)
            }
            dtype => {
                // Q8_0 starts its blocks with one f16 scale, Q4_K with two (d, dmin).
                let scale_bytes = if dtype == GgmlDType::Q4K { 4 } else { 2 };
                let within = o % dtype.type_size() as u64;
                if within < scale_bytes {
                    two_bytes(SCALE_F16)
                } else {
                    (mix((o + self.start) / 8) >> (8 * (o % 8))) as u8
                }
            }
        }
    }
}

impl Read for RandomWeights {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        let mut region = self.regions.partition_point(|r| r.end <= self.pos);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let pos = self.pos + i as u64;
            while region < self.regions.len() && self.regions[region].end <= pos {
                region += 1;
            }
            *b = match self.regions.get(region) {
                Some(r) if r.start <= pos => r.byte(pos - r.start),
                _ => 0,
            };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RandomWeights {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_name_themselves() {
        let spec: SyntheticSpec = "llama-3.2-1b:q8_0".parse().unwrap();
        assert_eq!(spec.to_string(), "synthetic:llama-3.2-1b:q8_0");
        assert_eq!("llama-3.1-8b".parse::<SyntheticSpec>().unwrap().dtype, GgmlDType::F16);
        assert!("llama-9b".parse::<SyntheticSpec>().unwrap_err().contains("llama-3.2-1b"));
        assert!("llama-3.2-1b:q2".parse::<SyntheticSpec>().is_err());
    }

    #[test]
    fn generated_weights_are_finite_and_reads_agree_in_any_order() {
        let mut file = "llama-3.2-1b:f16".parse::<SyntheticSpec>().unwrap().open().unwrap();
        let t = file.tensor("blk.3.attn_k.weight", &candle_core::Device::Cpu).unwrap();
        assert_eq!(t.shape().dims(), &[512, 2048]);
        let values = t.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite() && v.abs() < 0.0625 && *v != 0.0));
        let again = file.tensor("blk.3.attn_k.weight", &candle_core::Device::Cpu).unwrap();
        assert_eq!(again.data().unwrap(), t.data().unwrap());
        let norm = file.tensor("output_norm.weight", &candle_core::Device::Cpu).unwrap();
        let ones = norm.dequantize(&candle_core::Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert!(ones.iter().all(|&v| v == 1.0));
    }
}
