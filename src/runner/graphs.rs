//! CUDA graphs for plain decode steps (one token per sequence, each sampled). On a GPU, a small
//! model's decode step is bound by the host: every candle op costs ~6 µs of dispatch, allocation and
//! launch, ~20 ops a layer, while the GPU needs ~1–3 µs for each. The first step of a shape runs
//! eagerly and is then captured; later steps of that shape write their inputs into the captured
//! buffers and replay the whole forward pass with one launch. Shapes are bucketed — the batch padded
//! to [`BATCH_BUCKETS`] with rows that write nothing, block tables to a power of two — so that a few
//! graphs serve every step. A graph holds the addresses of everything its kernels touch; candle's
//! quantized matmuls move their workspaces when a bigger product comes (`ops::candle_scratch`), so
//! after that every graph is captured again. Captures go through `ops::cuda_capture`, which keeps
//! bodega's kernels programmatic dependents of the kernel before them across candle's memory nodes.

use super::HostStep;
use crate::error::{Error, Result};
use crate::model::{Model, StepInput};
use crate::ops::{self, PagedKvCache};
use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};
use std::collections::HashMap;

/// Batch sizes a graph is captured for; a decode step of more sequences than the last runs eagerly.
const BATCH_BUCKETS: [usize; 11] = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64];
/// The narrowest block table a graph is captured for.
const MIN_TABLE_BLOCKS: usize = 16;

/// The captured graphs of one worker, by shape.
#[derive(Default)]
pub struct DecodeGraphs {
    graphs: HashMap<GraphShape, Captured>,
    /// Graphs captured so far, recaptures included.
    captures: usize,
    /// [`ops::candle_scratch::generation`] when the graphs held were captured: candle's quantized
    /// matmuls have not moved their workspaces since.
    scratch_generation: u64,
    /// A capture failed (this driver or an op that cannot be captured): every step runs eagerly.
    failed: bool,
}

/// What fixes a graph: padded batch and block-table widths (the window group's, when the cache has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GraphShape {
    batch: usize,
    table: usize,
    window_table: Option<usize>,
}

/// A captured decode step: the graph, the inputs it reads, the logits it writes and each row's argmax
/// (greedy rows need only those ids back: no argmax launched after the replay).
struct Captured {
    graph: Graph,
    input: StepInput,
    logits: Tensor,
    ids: Tensor,
}

/// A graph owned by one worker thread.
struct Graph(CudaGraph);

// SAFETY: a CUDA graph must not be used from two threads at once; `Graph` is only ever owned by one
// worker, which moves to its own thread before the first capture and launches from there alone.
unsafe impl Send for Graph {}

impl DecodeGraphs {
    /// Graphs captured so far, recaptures included.
    pub(super) fn captures(&self) -> usize {
        self.captures
    }

    /// Drops every graph captured before candle's quantized matmuls last moved a workspace (a replay
    /// would write into freed memory); their shapes are captured again when next met.
    fn forget_if_scratch_moved(&mut self, cuda: &CudaDevice) {
        let now = ops::candle_scratch::generation(cuda);
        if now != self.scratch_generation {
            if !self.graphs.is_empty() {
                tracing::debug!(
                    "candle's quantized-matmul workspace grew: {} decode graphs to capture again",
                    self.graphs.len()
                );
                self.graphs.clear();
            }
            self.scratch_generation = now;
        }
    }

    /// Whether `step` is plain decode of a batch that graphs serve (none after a failed capture).
    pub(super) fn takes(&self, step: &HostStep) -> bool {
        let seqs = step.attention.num_seqs();
        let plain = step.token_ids.len() == seqs && step.logits_rows.len() == seqs;
        !self.failed && plain && seqs <= BATCH_BUCKETS[BATCH_BUCKETS.len() - 1]
    }

    /// The logits of plain decode step `step` (see [`DecodeGraphs::takes`]), from its shape's graph,
    /// captured after running it eagerly the first time; with each row's argmax when replayed.
    pub(super) fn forward(
        &mut self,
        model: &dyn Model,
        cache: &PagedKvCache,
        mut step: HostStep,
        cuda: &CudaDevice,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let seqs = step.attention.num_seqs();
        let shape = GraphShape::of(&step);
        step.pad(shape);
        self.forget_if_scratch_moved(cuda);
        if let Some(captured) = self.graphs.get_mut(&shape) {
            captured.replay(step, cache)?;
            return Ok((captured.logits.narrow(0, 0, seqs)?, Some(captured.ids.narrow(0, 0, seqs)?)));
        }
        // Uploaded before candle's cache of small uploads is on: these buffers are rewritten later.
        let input = step.upload(&Device::Cuda(cuda.clone()))?;
        // The eager run is this step's result, and it loads every kernel module, sets up cuBLAS and
        // caches the small constant uploads (strides) that the capture then finds.
        let _uploads = cuda.enable_cuda_graph_htod_cache();
        let logits = model.forward(&input, cache)?;
        // The eager run may have grown candle's workspaces: the capture then records the new ones.
        self.forget_if_scratch_moved(cuda);
        match Captured::new(model, cache, input, logits.dims2()?, cuda) {
            Ok(captured) => {
                tracing::debug!("captured a CUDA graph for decode steps of shape {shape:?}");
                self.graphs.insert(shape, captured);
                self.captures += 1;
            }
            Err(e) => {
                tracing::warn!("CUDA graphs are off for this run ({e}); decode steps run op by op");
                self.failed = true;
            }
        }
        Ok((logits.narrow(0, 0, seqs)?, None))
    }
}

impl GraphShape {
    fn of(step: &HostStep) -> Self {
        let seqs = step.attention.num_seqs();
        let table = |blocks: usize| blocks.next_power_of_two().max(MIN_TABLE_BLOCKS);
        Self {
            batch: BATCH_BUCKETS.into_iter().find(|&b| b >= seqs).unwrap_or(seqs),
            table: table(step.attention.max_blocks),
            window_table: step.window_attention.as_ref().map(|w| table(w.max_blocks)),
        }
    }
}

impl HostStep {
    /// Pads a plain decode step to `shape`: token 0 at position 0 in each added row.
    fn pad(&mut self, shape: GraphShape) {
        self.token_ids.resize(shape.batch, 0);
        self.positions.resize(shape.batch, 0);
        self.logits_rows = (0..shape.batch as u32).collect();
        self.attention.pad_decode(shape.batch, shape.table);
        if let (Some(window), Some(width)) = (&mut self.window_attention, shape.window_table) {
            window.pad_decode(shape.batch, width);
        }
    }
}

impl Captured {
    /// Records `model`'s forward pass over `input` (which has just run eagerly) into a graph whose
    /// logits, `rows` of them, land in a buffer of its own.
    fn new(
        model: &dyn Model,
        cache: &PagedKvCache,
        input: StepInput,
        rows: (usize, usize),
        cuda: &CudaDevice,
    ) -> Result<Self> {
        let device = Device::Cuda(cuda.clone());
        let logits = Tensor::zeros(rows, DType::F32, &device)?;
        let ids = Tensor::zeros(rows.0, DType::U32, &device)?;
        // Every tensor of the pass is freed inside the capture, so the graph owns no memory between
        // replays but its intermediates; the capture always ends, even when an op failed.
        let (graph, ()) = ops::cuda_capture::capture(&cuda.cuda_stream(), || -> Result<()> {
            let out = model.forward(&input, cache)?;
            logits.slice_set(&out, 0, 0)?;
            Ok(ids.slice_set(&ops::argmax_ids(&out)?, 0, 0)?)
        })?;
        let graph = graph.ok_or_else(|| Error::InvalidRequest("the decode step's capture recorded nothing".into()))?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (programmatic, kernels) = ops::cuda_capture::programmatic_edges(&graph)?;
            tracing::debug!("decode graph: {kernels} kernels, {programmatic} of them programmatic dependents");
        }
        graph.upload().w()?;
        Ok(Self { graph: Graph(graph), input, logits, ids })
    }

    /// Writes `step` (padded to this graph's shape) into the captured inputs and replays the graph.
    fn replay(&mut self, step: HostStep, cache: &PagedKvCache) -> Result<()> {
        let block_size = cache.block_size();
        step.attention.validate(block_size, cache.num_blocks(false))?;
        if let Some(window) = &step.window_attention {
            window.validate(block_size, cache.num_blocks(true))?;
        }
        self.input.token_ids.inplace_op1(&HostCopy(&step.token_ids))?;
        self.input.positions.inplace_op1(&HostCopy(&step.positions))?;
        ops::refill_uploads(&mut self.input.attention, step.attention)?;
        match (&mut self.input.window_attention, step.window_attention) {
            (Some(captured), Some(window)) => ops::refill_uploads(captured, window)?,
            (None, None) => {}
            _ => return Err(Error::InvalidRequest("a replayed step changed its window group".into())),
        }
        Ok(self.graph.0.launch().w()?)
    }
}

/// Overwrites a contiguous u32 tensor with host values, in place (at the address a graph reads).
struct HostCopy<'a>(&'a [u32]);

impl HostCopy<'_> {
    fn check(&self, layout: &Layout) -> candle_core::Result<()> {
        if layout.shape().elem_count() != self.0.len() || !layout.is_contiguous() {
            candle_core::bail!("host-copy: {} values for a tensor of shape {:?}", self.0.len(), layout.shape());
        }
        Ok(())
    }
}

impl InplaceOp1 for HostCopy<'_> {
    fn name(&self) -> &'static str {
        "host-copy"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        self.check(layout)?;
        let CpuStorage::U32(values) = storage else { candle_core::bail!("host-copy writes u32 tensors") };
        let start = layout.start_offset();
        values[start..start + self.0.len()].copy_from_slice(self.0);
        Ok(())
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        self.check(layout)?;
        let stream = storage.device.cuda_stream();
        let CudaStorageSlice::U32(values) = &mut storage.slice else {
            candle_core::bail!("host-copy writes u32 tensors");
        };
        let start = layout.start_offset();
        let mut target = values.slice_mut(start..start + self.0.len());
        stream.memcpy_htod(self.0, &mut target).w()
    }
}
