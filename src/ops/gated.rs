//! `act(gate) · up`, the gated activation of a feed-forward block: on the CPU one fused pass on
//! the kernel pool (`bodega_cpu_kernels::gated_activation`), on CUDA one kernel that reads gate and
//! up where the fused gate/up matmul left them (strided halves, no copies), elsewhere candle's ops.

use bodega_cpu_kernels::Activation;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `act(gate) · up` for two tensors of one shape.
pub fn gated_activation(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    let f32s = gate.dtype() == DType::F32 && up.dtype() == DType::F32;
    if gate.device().is_cpu() && f32s {
        return gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &Gated(act));
    }
    if gate.device().is_cuda() && f32s && gate.rank() == 2 {
        return gate.apply_op2_no_bwd(up, &Gated(act));
    }
    let activated = match act {
        Activation::Silu => candle_nn::ops::silu(gate)?,
        Activation::GeluTanh => gate.gelu()?,
    };
    activated * up
}

/// The fused op (CPU and CUDA).
struct Gated(Activation);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(&self, gate: &CpuStorage, g_l: &Layout, up: &CpuStorage, u_l: &Layout) -> Result<(CpuStorage, Shape)> {
        if g_l.shape() != u_l.shape() {
            candle_core::bail!("gated-activation: gate {:?} and up {:?} differ", g_l.shape(), u_l.shape());
        }
        let (Some((g0, g1)), Some((u0, u1))) = (g_l.contiguous_offsets(), u_l.contiguous_offsets()) else {
            candle_core::bail!("gated-activation takes contiguous tensors");
        };
        let (CpuStorage::F32(gate), CpuStorage::F32(up)) = (gate, up) else {
            candle_core::bail!("gated-activation takes f32 tensors");
        };
        let mut out = vec![0.0f32; g1 - g0];
        bodega_cpu_kernels::gated_activation(self.0, &gate[g0..g1], &up[u0..u1], &mut out);
        Ok((CpuStorage::F32(out), g_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gate: &candle_core::CudaStorage,
        g_l: &Layout,
        up: &candle_core::CudaStorage,
        u_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if g_l.shape() != u_l.shape() {
            candle_core::bail!("gated-activation: gate {:?} and up {:?} differ", g_l.shape(), u_l.shape());
        }
        let gelu = self.0 == Activation::GeluTanh;
        Ok((super::cuda::gated_activation(gelu, (gate, g_l), (up, u_l))?, g_l.shape().clone()))
    }
}
