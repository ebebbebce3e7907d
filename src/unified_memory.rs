//! The memory plan on unified memory (Apple Silicon), where the CPU, the GPU, the weights, the KV cache
//! and the OS share one pool. Metal recommends how much a process's GPU work should use at most
//! (`recommendedMaxWorkingSetSize`); going past it does not fail cleanly but swaps or stalls the
//! whole desktop. So bodega plans weights + KV pool + activations against that number, less headroom
//! for the OS and other programs, sizes the KV pool from what remains, and refuses a plan that does
//! not fit with a message naming what is needed, what is available and the flag that changes it.

use crate::error::{Error, Result};
use crate::model::ModelInfo;

/// The OS and other programs keep 1/8 of the recommended working set.
const HEADROOM_DIVISOR: u64 = 8;
/// Positions per decode partition of the Metal attention kernel (its scratch is an activation).
const PARTITION_SIZE: usize = 512;

/// What a Mac's GPU may use, from Metal's recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnifiedMemory {
    working_set: u64,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl UnifiedMemory {
    /// The budget for a device whose `recommendedMaxWorkingSetSize` is `working_set` bytes.
    pub fn new(working_set: u64) -> Self {
        Self { working_set }
    }

    /// Bytes bodega plans with: the working set less the OS headroom.
    pub fn usable(&self) -> u64 {
        self.working_set - self.working_set / HEADROOM_DIVISOR
    }

    /// Before loading: the weights alone must fit, or loading them would already overrun the GPU.
    pub fn check_weights(&self, weights: u64) -> Result<()> {
        if weights <= self.usable() {
            return Ok(());
        }
        Err(Error::MemoryBudget {
            message: format!(
                "the model's weights need {} but {} of GPU memory is usable on this Mac (Metal recommends at \
                 most {}, less 1/8 kept for the OS)",
                gib(weights),
                gib(self.usable()),
                gib(self.working_set)
            ),
            hint: "use a smaller quantization of the model (e.g. REPO:Q4_K_M), or --device cpu".into(),
        })
    }

    /// The KV pool in bytes. `requested` (`--kv-memory`) must fit beside the weights and activations;
    /// by default the pool takes what remains, at most `needed` (every sequence at full context).
    /// Fails when the pool would hold less than `min_pool` bytes.
    pub fn kv_pool(
        &self,
        weights: u64,
        activations: u64,
        requested: Option<u64>,
        needed: u64,
        min_pool: u64,
    ) -> Result<u64> {
        let fixed = weights + activations;
        let left = self.usable().saturating_sub(fixed);
        let plan = format!(
            "weights {} + activations {} leave {} of the {} usable on this Mac's GPU",
            gib(weights),
            gib(activations),
            gib(left),
            gib(self.usable())
        );
        match requested {
            Some(pool) if pool > left => Err(Error::MemoryBudget {
                message: format!("--kv-memory {} does not fit: {plan}", gib(pool)),
                hint: format!("lower --kv-memory to at most {}", gib(left)),
            }),
            Some(pool) => Ok(pool),
            None if left < min_pool => Err(Error::MemoryBudget {
                message: format!("no room for the KV cache: {plan} (it needs at least {})", gib(min_pool)),
                hint: "lower --max-batched-tokens or --max-seqs, or use a smaller quantization of the model".into(),
            }),
            None => Ok(left.min(needed)),
        }
    }
}

/// An upper estimate of the activation memory of one step: per batched token, 16 floats per model
/// width (residual stream, norms, Q/K/V/O and an MLP up to ~6x wider); the logits of `max_seqs`
/// rows; the decode attention's partition scratch at full `context`.
pub fn activation_bytes(info: &ModelInfo, max_batched_tokens: usize, max_seqs: usize, context: usize) -> u64 {
    let width = info.num_heads * info.head_dim;
    let per_token = 16 * width * 4;
    let logits = max_seqs * info.vocab_size * 4;
    let scratch = max_seqs * info.num_heads * context.div_ceil(PARTITION_SIZE) * (info.head_dim + 2) * 4;
    (max_batched_tokens * per_token + logits + scratch) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_os_keeps_an_eighth_of_the_working_set() {
        assert_eq!(UnifiedMemory::new(16 * GIB).usable(), 14 * GIB);
    }

    #[test]
    fn weights_beyond_the_usable_memory_are_refused_before_loading() {
        let memory = UnifiedMemory::new(8 * GIB);
        assert!(memory.check_weights(7 * GIB).is_ok());
        let err = memory.check_weights(7 * GIB + 1).unwrap_err().to_string();
        assert!(err.contains("7.00 GiB") && err.contains("8.00 GiB"), "{err}");
    }

    #[test]
    fn the_default_pool_takes_what_remains_up_to_what_is_needed() {
        let memory = UnifiedMemory::new(16 * GIB); // 14 GiB usable
        assert_eq!(memory.kv_pool(8 * GIB, GIB, None, 100 * GIB, 1).unwrap(), 5 * GIB);
        assert_eq!(memory.kv_pool(8 * GIB, GIB, None, 2 * GIB, 1).unwrap(), 2 * GIB);
    }

    #[test]
    fn kv_memory_that_does_not_fit_names_the_flag_and_the_room_left() {
        let memory = UnifiedMemory::new(16 * GIB);
        assert_eq!(memory.kv_pool(8 * GIB, GIB, Some(5 * GIB), 0, 1).unwrap(), 5 * GIB);
        match memory.kv_pool(8 * GIB, GIB, Some(6 * GIB), 0, 1).unwrap_err() {
            Error::MemoryBudget { message, hint } => {
                assert!(message.starts_with("--kv-memory 6.00 GiB does not fit"), "{message}");
                assert!(message.contains("weights 8.00 GiB") && message.contains("14.00 GiB usable"), "{message}");
                assert_eq!(hint, "lower --kv-memory to at most 5.00 GiB");
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn no_room_for_a_pool_is_an_error_not_a_crash_later() {
        let memory = UnifiedMemory::new(16 * GIB);
        let err = memory.kv_pool(13 * GIB, GIB, None, 10 * GIB, 1 << 20).unwrap_err().to_string();
        assert!(err.starts_with("no room for the KV cache"), "{err}");
    }

    #[test]
    fn activations_grow_with_the_batch_the_logits_and_the_context() {
        let info = ModelInfo {
            architecture: "llama".into(),
            name: None,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            vocab_size: 128_256,
            context_length: 131_072,
            layer_windows: vec![0; 16],
            weight_bytes: 0,
            step_weight_bytes: 0,
        };
        let base = activation_bytes(&info, 512, 64, 4096);
        // 512 tokens x 16 x 2048 x 4 B + 64 x 128256 x 4 B + 64 x 32 x 8 partitions x 66 x 4 B.
        assert_eq!(base, 512 * 16 * 2048 * 4 + 64 * 128_256 * 4 + 64 * 32 * 8 * 66 * 4);
        assert!(activation_bytes(&info, 1024, 64, 4096) > base);
        assert!(activation_bytes(&info, 512, 64, 8192) > base);
    }
}
