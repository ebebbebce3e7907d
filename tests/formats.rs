//! Every architecture in every format against implementations nobody here wrote: tiny random models
//! (tests/fixtures/tiny, made by tests/fixtures/make-tiny-models.py) as safetensors, GGUF and MLX
//! folders, with reference logits and greedy tokens from transformers and from mlx-lm. Through the
//! model directly (logits) and through the batched engine, alone and among 8 (greedy tokens). The
//! cases live in formats/cases.rs so that tests/gpu.rs runs the same ones on CUDA.

#[path = "formats/cases.rs"]
mod cases;

/// The device the cases run on here.
fn test_device() -> candle_core::Device {
    candle_core::Device::Cpu
}
