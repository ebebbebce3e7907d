//! Captures CUDA graphs in which bodega's kernels stay programmatic dependents of the kernel before.
//!
//! candle allocates every op's output with `cuMemAllocAsync` and frees a dropped tensor with
//! `cuMemFreeAsync`; in a stream capture each becomes a memory node on the chain between two
//! kernels, and a kernel captured after a memory node gets a plain edge from it. The node itself
//! follows the kernel before, so the programmatic launch of `cuda_launch` was lost wherever an op
//! allocated or freed: at almost every op of a decode step (on an H200, a captured chain of fused
//! add + norm ops and products had plain edges only). Edges cannot be removed from a graph that
//! holds memory nodes, so [`capture`] steers the capture while it records:
//! - before a bodega kernel is captured, [`link_next_kernel`] walks back from the capture's pending
//!   nodes through the memory nodes: the kernel depends on the nodes found behind them
//!   (programmatically on kernels), on the allocations among them, and on the frees held back from
//!   the kernel before; the frees it passed are held back for the next kernel in turn;
//! - bodega's ops allocate through [`alloc`]: the allocation node hangs off the latest frees held
//!   back (memory released two kernels ago), not off the kernel before, and the kernel depends on it.
//!
//! Nothing that touches memory moves earlier than the kernel before: a bodega kernel waits for that
//! kernel (`follow_previous_kernel`) before it reads or writes anything but the step's metadata, every
//! allocation precedes the kernels that use it, and every free follows the last use of its buffer, so
//! the graph's allocator only reuses memory as the graph orders it (a kernel or two later than in a
//! plain capture). Allocations hung off earlier kernels instead made replays 6–8× (a chain of small
//! kernels) to 40–54× (a decode step) slower on the H200 (docs/perf.md); off frees alone (or as
//! roots) they cost nothing.

use super::cuda_launch::dependent_launches;
use candle_core::cuda_backend::cudarc::driver::sys::{
    self, CUgraphDependencyType, CUgraphEdgeData, CUgraphInstantiate_flags, CUgraphNode, CUgraphNodeType,
    CUstreamCaptureMode, CUstreamCaptureStatus, CUstreamUpdateCaptureDependencies_flags,
};
use candle_core::cuda_backend::cudarc::driver::{CudaGraph, CudaSlice, CudaStream, DeviceRepr};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};
use std::cell::RefCell;
use std::collections::HashSet;
use std::ptr::null_mut;
use std::sync::Arc;

/// What this thread's steered capture has linked so far.
#[derive(Default)]
struct Links {
    /// Whether a bodega kernel was captured yet (allocations before the first stay on the chain).
    linked: bool,
    /// Allocation nodes made by [`alloc`] since the last kernel, for the next one.
    allocations: Vec<CUgraphNode>,
    /// Free nodes found behind the last kernel, which the next kernel depends on.
    held_frees: Vec<CUgraphNode>,
    /// The latest non-empty `held_frees`: what a new allocation hangs off.
    anchor: Vec<CUgraphNode>,
}

/// A captured node and the data of the edge from it.
type Dep = (CUgraphNode, CUgraphEdgeData);

thread_local! {
    /// The links of the capture [`capture`] is recording on this thread (thread-local capture mode:
    /// only this thread's submissions are recorded), `None` outside one.
    static LINKS: RefCell<Option<Links>> = const { RefCell::new(None) };
}

/// Records what `record` submits to `stream` into a CUDA graph, steering the capture as the module
/// docs say when bodega's kernels launch as programmatic dependents. The capture always ends, even
/// when `record` fails; `None` when it recorded nothing.
pub fn capture<T, E: From<candle_core::Error>>(
    stream: &Arc<CudaStream>,
    record: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<(Option<CudaGraph>, T), E> {
    let steer = dependent_launches(stream)?;
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).w()?;
    LINKS.with(|links| *links.borrow_mut() = steer.then(Links::default));
    let recorded = record();
    LINKS.with(|links| *links.borrow_mut() = None);
    let graph = stream.end_capture(CUgraphInstantiate_flags(0)).w();
    Ok((graph?, recorded?))
}

/// The current dependencies of `stream`'s capture, when [`capture`] steers it.
fn steered_capture(stream: &CudaStream) -> Result<Option<Vec<Dep>>> {
    if LINKS.with(|links| links.borrow().is_none()) {
        return Ok(None);
    }
    capture_state(stream)
}

/// Runs `f` on this thread's links (only called while [`steered_capture`] found a capture).
fn with_links<R>(f: impl FnOnce(&mut Links) -> R) -> R {
    LINKS.with(|links| f(links.borrow_mut().get_or_insert_with(Links::default)))
}

/// The stream's current capture dependencies with their edge data; `None` when it is not capturing.
fn capture_state(stream: &CudaStream) -> Result<Option<Vec<Dep>>> {
    let mut status = CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    let (mut id, mut graph) = (0u64, null_mut());
    let (mut nodes, mut data, mut count) = (std::ptr::null(), std::ptr::null(), 0usize);
    // SAFETY: plain queries of this stream; the returned arrays are read before any other call.
    unsafe {
        sys::cuStreamGetCaptureInfo_v3(
            stream.cu_stream(),
            &mut status,
            &mut id,
            &mut graph,
            &mut nodes,
            &mut data,
            &mut count,
        )
        .result()
        .w()?;
        if status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE {
            return Ok(None);
        }
        let nodes = if count == 0 { &[][..] } else { std::slice::from_raw_parts(nodes, count) };
        let plain = std::mem::zeroed::<CUgraphEdgeData>();
        let deps = (0..count).map(|i| (nodes[i], if data.is_null() { plain } else { *data.add(i) })).collect();
        Ok(Some(deps))
    }
}

/// Makes `deps` the nodes the stream's next captured operation depends on.
fn set_capture_deps(stream: &CudaStream, deps: &[Dep]) -> Result<()> {
    let (mut nodes, data): (Vec<_>, Vec<_>) = deps.iter().copied().unzip();
    let set = CUstreamUpdateCaptureDependencies_flags::CU_STREAM_SET_CAPTURE_DEPENDENCIES as u32;
    // SAFETY: the nodes belong to the stream's capture graph (found through it above).
    unsafe {
        sys::cuStreamUpdateCaptureDependencies_v2(
            stream.cu_stream(),
            nodes.as_mut_ptr(),
            data.as_ptr(),
            nodes.len(),
            set,
        )
    }
    .result()
    .w()
}

/// An uninitialised device buffer of `len` elements for a bodega kernel's output; while `dev`'s
/// stream captures programmatic launches, its allocation node is placed as the module docs say.
///
/// # Safety
/// As candle's `CudaDevice::alloc`: the kernels must write every element before anything reads it.
pub(super) unsafe fn alloc<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    let stream = dev.cuda_stream();
    let Some(current) = steered_capture(&stream)? else { return dev.alloc::<T>(len) };
    let Some(anchor) = with_links(|l| l.linked.then(|| l.anchor.clone())) else { return dev.alloc::<T>(len) };
    let plain = std::mem::zeroed::<CUgraphEdgeData>();
    set_capture_deps(&stream, &anchor.iter().map(|&n| (n, plain)).collect::<Vec<_>>())?;
    let buffer = dev.alloc::<T>(len);
    let made = capture_state(&stream)?.unwrap_or_default();
    set_capture_deps(&stream, &current)?;
    with_links(|l| l.allocations.extend(made.iter().map(|&(n, _)| n)));
    buffer
}

/// Sets the dependencies of the bodega kernel `stream` is about to capture (module docs); nothing
/// when it is not capturing.
pub(super) fn link_next_kernel(stream: &CudaStream) -> Result<()> {
    let Some(current) = steered_capture(stream)? else { return Ok(()) };
    let (mut before, mut allocations, mut frees) = (Vec::new(), Vec::new(), Vec::new());
    let mut walk: Vec<CUgraphNode> = current.iter().map(|&(n, _)| n).collect();
    let mut seen = HashSet::new();
    while let Some(node) = walk.pop() {
        if !seen.insert(node) {
            continue;
        }
        match node_type(node)? {
            CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_FREE => {
                frees.push(node);
                walk.extend(node_deps(node)?);
            }
            CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC => allocations.push(node),
            kind => before.push((node, kind == CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL)),
        }
    }
    let plain = unsafe { std::mem::zeroed::<CUgraphEdgeData>() };
    let mut programmatic = plain;
    programmatic.from_port = sys::CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC as u8;
    programmatic.type_ = CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8;
    let deps = with_links(|l| {
        let mut deps: Vec<Dep> =
            before.iter().map(|&(n, kernel)| (n, if kernel { programmatic } else { plain })).collect();
        let mut added: HashSet<CUgraphNode> = deps.iter().map(|&(n, _)| n).collect();
        for node in allocations.iter().chain(&l.allocations).chain(&l.held_frees) {
            if added.insert(*node) {
                deps.push((*node, plain));
            }
        }
        l.linked = true;
        l.allocations.clear();
        if !frees.is_empty() {
            l.anchor.clone_from(&frees);
        }
        l.held_frees = frees;
        deps
    });
    set_capture_deps(stream, &deps)
}

/// Programmatic edges and kernel nodes in `graph`: how many of its kernels may start while the
/// kernel before them finishes (tests and `runner::graphs`' debug log).
pub fn programmatic_edges(graph: &CudaGraph) -> Result<(usize, usize)> {
    let graph = graph.cu_graph();
    let mut count = 0usize;
    // SAFETY: queries of a live, instantiated graph; each array is sized by the call before.
    unsafe {
        sys::cuGraphGetNodes(graph, null_mut(), &mut count).result().w()?;
        let mut nodes = vec![null_mut(); count];
        sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut count).result().w()?;
        let mut kernels = 0;
        for &node in &nodes {
            kernels += usize::from(node_type(node)? == CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL);
        }
        let mut edges = 0usize;
        sys::cuGraphGetEdges_v2(graph, null_mut(), null_mut(), null_mut(), &mut edges).result().w()?;
        let (mut from, mut to) = (vec![null_mut(); edges], vec![null_mut(); edges]);
        let mut data = vec![std::mem::zeroed::<CUgraphEdgeData>(); edges];
        sys::cuGraphGetEdges_v2(graph, from.as_mut_ptr(), to.as_mut_ptr(), data.as_mut_ptr(), &mut edges)
            .result()
            .w()?;
        let programmatic = CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8;
        Ok((data.iter().filter(|d| d.type_ == programmatic).count(), kernels))
    }
}

fn node_type(node: CUgraphNode) -> Result<CUgraphNodeType> {
    let mut kind = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
    // SAFETY: `node` is a live node of a graph being captured or instantiated.
    unsafe { sys::cuGraphNodeGetType(node, &mut kind) }.result().w()?;
    Ok(kind)
}

fn node_deps(node: CUgraphNode) -> Result<Vec<CUgraphNode>> {
    let mut count = 0usize;
    // SAFETY: as in `node_type`; the array is sized by the first call.
    unsafe {
        sys::cuGraphNodeGetDependencies_v2(node, null_mut(), null_mut(), &mut count).result().w()?;
        let mut deps = vec![null_mut(); count];
        sys::cuGraphNodeGetDependencies_v2(node, deps.as_mut_ptr(), null_mut(), &mut count).result().w()?;
        Ok(deps)
    }
}
