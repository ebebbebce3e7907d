//! Turning files on disk into a model: GGUF today; safetensors and synthetic weights join here.

pub mod gguf;
