//! Rotary position embeddings with per-token positions: the cos/sin tables are computed once for the
//! whole context and gathered by each step's positions, so that tokens of different sequences (at
//! different depths) rotate correctly inside one batch.

use crate::error::Result;
use crate::ops::RopeTables;
use candle_core::{Device, Tensor};

/// How the rotated dimensions are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF Llama files, whose Q/K weights the converter permuted.
    Interleaved,
    /// Halves (i, i + d/2): Qwen, Gemma and every HF-layout file (GPT-NeoX style).
    Halves,
}

/// Precomputed rotation tables.
#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

/// The frequency settings a model file gives.
#[derive(Debug, Clone)]
pub struct RopeConfig {
    /// Rotated elements per head.
    pub dim: usize,
    /// θ base.
    pub base: f32,
    /// Positions are divided by this (linear scaling); 1.0 for none.
    pub linear_factor: f32,
    /// Per-frequency divisors (Llama 3.x long-context scaling stores them as `rope_freqs.weight`).
    pub freq_factors: Option<Vec<f32>>,
    /// Positions to precompute.
    pub max_positions: usize,
    /// Pairing of dimensions.
    pub style: RopeStyle,
}

impl Rope {
    /// Computes the tables on `device`.
    pub fn new(cfg: &RopeConfig, device: &Device) -> Result<Self> {
        let half = cfg.dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / cfg.base.powf(2.0 * i as f32 / cfg.dim as f32);
                f / cfg.freq_factors.as_ref().map_or(1.0, |ff| ff[i])
            })
            .collect();
        let mut angles = Vec::with_capacity(cfg.max_positions * half);
        for p in 0..cfg.max_positions {
            let pos = p as f32 / cfg.linear_factor;
            angles.extend(inv_freq.iter().map(|f| pos * f));
        }
        let angles = Tensor::from_vec(angles, (cfg.max_positions, half), device)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()?, style: cfg.style })
    }

    /// The tables' rows at one step's `positions` (`[T]` u32), gathered once per step and shared by
    /// every layer (on a GPU each gather is a launch, so not once per layer and projection).
    pub fn at(&self, positions: &Tensor) -> Result<StepRotation> {
        Ok(StepRotation {
            cos: self.cos.index_select(positions, 0)?.unsqueeze(1)?,
            sin: self.sin.index_select(positions, 0)?.unsqueeze(1)?,
            style: self.style,
        })
    }
}

/// One step's rotation: cos and sin of every token's position, `[T, 1, head_dim / 2]`.
#[derive(Debug)]
pub struct StepRotation {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl StepRotation {
    /// The tables for [`ops::rope_kv_write`](crate::ops::rope_kv_write).
    pub fn tables(&self) -> RopeTables<'_> {
        RopeTables { cos: &self.cos, sin: &self.sin, interleaved: self.style == RopeStyle::Interleaved }
    }
}
