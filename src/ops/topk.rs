//! `top_k_rows`: the candidates of top-k sampling, taken where the logits are. A sampler with top-k
//! draws from at most its k largest logits (and penalties only lower logits, so k plus the number of
//! penalised tokens suffice), so on CUDA a kernel selects them on the device and `8·k` bytes a row
//! cross to the host instead of a whole vocabulary of f32 (513 KB a row at 128,256), and the host
//! ranks k candidates instead of the vocabulary. Elsewhere the rows are copied and selected by the
//! reference, [`cpu::top_k`].

use super::cpu;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The `k` largest logits of each row of `logits` (`[R, V]`) with their token ids, in
/// `f32::total_cmp` order with ties to the lower id (the order the sampler ranks candidates by):
/// those above the k-th largest first, then its equals, each in id order; all `V` when `k ≥ V`.
pub fn top_k_rows(logits: &Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    let (rows, vocab) = logits.dims2()?;
    let k = k.min(vocab);
    if rows == 0 || k == 0 {
        return Ok(vec![Vec::new(); rows]);
    }
    let logits = logits.to_dtype(DType::F32)?;
    if !logits.device().is_cuda() {
        return Ok(logits.to_vec2::<f32>()?.iter().map(|row| cpu::top_k(row, k)).collect());
    }
    let packed = logits.contiguous()?.apply_op1_no_bwd(&TopKRows { k })?.to_vec3::<u32>()?;
    Ok(packed
        .iter()
        .map(|row| row[0].iter().zip(&row[1]).map(|(&id, &bits)| (id, f32::from_bits(bits))).collect())
        .collect())
}

/// The custom op behind the CUDA path: `[R, 2, k]` u32, the ids then the values' bits (its CPU half
/// is the reference, for completeness of the op).
struct TopKRows {
    k: usize,
}

impl CustomOp1 for TopKRows {
    fn name(&self) -> &'static str {
        "top-k-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab, data) = super::logits_rows(storage, layout, self.name())?;
        let mut packed = Vec::with_capacity(rows * 2 * self.k);
        for row in data.chunks_exact(vocab) {
            let top = cpu::top_k(row, self.k);
            packed.extend(top.iter().map(|c| c.0));
            packed.extend(top.iter().map(|c| c.1.to_bits()));
        }
        Ok((CpuStorage::U32(packed), Shape::from((rows, 2, self.k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        Ok((super::cuda::top_k_rows(storage, layout, rows, vocab, self.k)?, Shape::from((rows, 2, self.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_largest_logits_rank_by_total_order_with_ties_to_the_lower_id() {
        let row = [1.0, f32::NAN, 3.0, -0.0, 0.0, 3.0, f32::INFINITY, -f32::NAN, 1.0];
        let logits = Tensor::from_slice(&row, (1, row.len()), &Device::Cpu).unwrap();
        let ids = |k| top_k_rows(&logits, k).unwrap()[0].iter().map(|c| c.0).collect::<Vec<u32>>();
        assert_eq!(ids(1), vec![1], "+NaN ranks above +∞, as in f32::total_cmp");
        assert_eq!(ids(2), vec![1, 6]);
        // Those above the k-th largest (3.0, at ids 2 and 5) first, then its first equal by id.
        assert_eq!(ids(3), vec![1, 6, 2]);
        assert_eq!(ids(6), vec![1, 2, 5, 6, 0, 8]);
        assert_eq!(ids(7), vec![0, 1, 2, 5, 6, 8, 4], "+0 ranks above −0");
        assert_eq!(ids(20).len(), row.len(), "k beyond the vocabulary takes all of it");
        let top = &top_k_rows(&logits, 4).unwrap()[0];
        assert!(top.iter().all(|&(i, v)| v.to_bits() == row[i as usize].to_bits()), "values come back unchanged");
        let empty = Tensor::zeros((0, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(top_k_rows(&empty, 3).unwrap().is_empty());
    }
}
