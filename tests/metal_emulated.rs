//! The Metal kernels (`kernels/metal/*.metal`), compiled unmodified as C++20 against the MSL shim in
//! `kernels/metal/emu/` and run on the CPU (each SIMT thread an OS thread), against the Rust CPU
//! reference (`bodega::ops::cpu`) on random inputs: ragged batches that mix decode and prefill, partial
//! last blocks, scattered block tables, GQA ratios 1, 3, 4, 8 and 16, head dims 64, 128 and 256, f16 and
//! bf16, with and without a sliding window. Cache slots that no query may see hold NaN, and the driver
//! starts outputs and scratch as NaN, so a read out of range or a row left unwritten fails.
//! The same cases run under ThreadSanitizer (a missing barrier is a data race), and deliberately
//! broken copies of the kernels must fail. `scripts/test-metal-emulated.sh` installs clang-19 and
//! runs this file; BODEGA_CLANG names another clang++.

use bodega::ops::cpu::{self, AttentionParams};
use bodega::ops::AttentionMetadata;
use bodega_cpu_kernels::KernelPath;
use half::{bf16, f16};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BLOCK: usize = 16;
const KERNELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/metal");

/// The storage types of the GPU caches.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F16,
    Bf16,
}

impl Dtype {
    /// Largest acceptable |kernel - reference| for attention outputs (|v| <= 1): a few output ulps.
    fn tolerance(self) -> f32 {
        match self {
            Dtype::F16 => 1e-3,
            Dtype::Bf16 => 8e-3,
        }
    }

    fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F16 => f16::from_f32(x).to_f32(),
            Dtype::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    fn encode(self, x: f32) -> [u8; 2] {
        match self {
            Dtype::F16 => f16::from_f32(x).to_le_bytes(),
            Dtype::Bf16 => bf16::from_f32(x).to_le_bytes(),
        }
    }

    fn decode(self, b: [u8; 2]) -> f32 {
        match self {
            Dtype::F16 => f16::from_le_bytes(b).to_f32(),
            Dtype::Bf16 => bf16::from_le_bytes(b).to_f32(),
        }
    }

    fn flag(self) -> u32 {
        (self == Dtype::Bf16) as u32
    }
}

/// A compiled driver (kernels/metal/emu/driver.cpp).
struct Driver(PathBuf);

/// How to compile the kernels.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    Plain,
    ThreadSanitizer,
}

fn clang() -> String {
    let clang = std::env::var("BODEGA_CLANG").unwrap_or_else(|_| "clang++-19".into());
    match Command::new(&clang).arg("--version").output() {
        Ok(out) if out.status.success() => clang,
        _ => panic!(
            "the Metal emulation tests need {clang} (apt-get install clang-19, or run \
             scripts/test-metal-emulated.sh, which installs it; BODEGA_CLANG names another clang++)"
        ),
    }
}

impl Driver {
    /// Compiles the driver with the kernels of `kernel_dirs` (searched first) and then the real ones,
    /// unless a build newer than every source is already there (scripts/test.sh runs this file twice).
    fn build(name: &str, kernel_dirs: &[&Path], build: Build) -> Driver {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("metal-emu").join(name);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let emu = Path::new(KERNELS).join("emu");
        let mut dirs = kernel_dirs.to_vec();
        dirs.extend([Path::new(KERNELS), &emu]);
        if is_newer_than_sources(&out, &dirs) {
            return Driver(out);
        }
        let mut cmd = Command::new(clang());
        cmd.args(["-std=c++20", "-O1", "-g", "-Wall", "-Werror", "-Wno-unknown-attributes"])
            .args(["-Wno-gnu-anonymous-struct", "-Wno-nested-anon-types"]);
        if build == Build::ThreadSanitizer {
            cmd.arg("-fsanitize=thread");
        }
        for dir in kernel_dirs {
            cmd.arg("-I").arg(dir);
        }
        cmd.arg("-I").arg(format!("{KERNELS}/emu")).arg("-I").arg(KERNELS);
        let status = cmd.arg(format!("{KERNELS}/emu/driver.cpp")).arg("-o").arg(&out).status().unwrap();
        assert!(status.success(), "compiling the kernels for emulation failed ({name})");
        Driver(out)
    }

    /// Runs one call: `input` in, the output file's bytes back, or why it failed.
    fn run(&self, op: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        let dir = tempfile::tempdir().unwrap();
        let (inp, outp) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&inp, input).unwrap();
        let mut child = Command::new(&self.0)
            .args([std::ffi::OsStr::new(op), inp.as_os_str(), outp.as_os_str()])
            .env("TSAN_OPTIONS", "halt_on_error=1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A kernel whose threads miss each other at a barrier hangs: that is a failure too.
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(300) {
                child.kill().unwrap();
                return Err("the kernel hung (threads stuck at a barrier?)".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            let log = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "driver failed ({}): {}",
                out.status,
                log.lines().take(12).collect::<Vec<_>>().join("\n")
            ));
        }
        Ok(std::fs::read(outp).unwrap())
    }
}

/// Whether `out` exists and is newer than this file (which holds the compiler flags) and every file
/// in `dirs`.
fn is_newer_than_sources(out: &Path, dirs: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(out) else { return false };
    let this_file = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metal_emulated.rs"));
    let sources = dirs.iter().flat_map(|dir| std::fs::read_dir(dir).unwrap()).map(|entry| entry.unwrap().path());
    std::iter::once(this_file).chain(sources).all(|path| path.is_dir() || modified(&path).is_some_and(|m| m <= built))
}

fn driver(build: Build) -> &'static Driver {
    static PLAIN: OnceLock<Driver> = OnceLock::new();
    static TSAN: OnceLock<Driver> = OnceLock::new();
    match build {
        Build::Plain => PLAIN.get_or_init(|| Driver::build("driver", &[], build)),
        Build::ThreadSanitizer => TSAN.get_or_init(|| Driver::build("driver-tsan", &[], build)),
    }
}

fn random(rng: &mut ChaCha8Rng, n: usize, dtype: Dtype) -> Vec<f32> {
    (0..n).map(|_| dtype.round(rng.random_range(-1.0f32..1.0))).collect()
}

fn put_u32s(buf: &mut Vec<u8>, values: &[u32]) {
    values.iter().for_each(|v| buf.extend(v.to_le_bytes()));
}

fn put_values(buf: &mut Vec<u8>, values: &[f32], dtype: Dtype) {
    values.iter().for_each(|&v| buf.extend(dtype.encode(v)));
}

fn get_values(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| dtype.decode([b[0], b[1]])).collect()
}

/// One paged-attention call: shapes, the batch ((context length, query length) per sequence) and window.
#[derive(Debug, Clone)]
struct Case {
    heads: usize,
    kv_heads: usize,
    dim: usize,
    seqs: Vec<(usize, usize)>,
    window: usize,
    dtype: Dtype,
}

impl Case {
    /// The driver's input and the CPU reference's output, from `seed`.
    fn build(&self, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, kvh, d, dtype) = (self.heads, self.kv_heads, self.dim, self.dtype);
        let num_blocks = self.seqs.iter().map(|(ctx, _)| ctx.div_ceil(BLOCK)).sum::<usize>() + 3;
        let row = kvh * d;
        // Slots that hold no key stay NaN: a kernel that reads one where it should not fails.
        let mut k_cache = vec![f32::NAN; num_blocks * BLOCK * row];
        let mut v_cache = k_cache.clone();
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        free.shuffle(&mut rng);
        let mut meta = AttentionMetadata { cu_query_lens: vec![0], ..Default::default() };
        meta.max_blocks = self.seqs.iter().map(|(ctx, _)| ctx.div_ceil(BLOCK)).max().unwrap();
        let mut q = Vec::new();
        for &(ctx, q_len) in &self.seqs {
            let table: Vec<u32> = (0..ctx.div_ceil(BLOCK)).map(|_| free.pop().unwrap()).collect();
            let slots: Vec<u32> = (0..ctx).map(|p| table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32).collect();
            cpu::kv_write(&random(&mut rng, ctx * row, dtype), &slots, &mut k_cache, row);
            cpu::kv_write(&random(&mut rng, ctx * row, dtype), &slots, &mut v_cache, row);
            q.extend(random(&mut rng, q_len * h * d, dtype));
            meta.slot_mapping.extend(&slots[ctx - q_len..]);
            meta.block_tables.extend(&table);
            meta.block_tables.resize(meta.block_tables.len() + meta.max_blocks - table.len(), 0);
            meta.cu_query_lens.push(meta.cu_query_lens.last().unwrap() + q_len as u32);
            meta.context_lens.push(ctx as u32);
        }
        let scale = 1.0 / (d as f32).sqrt();
        let params = AttentionParams {
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
            block_size: BLOCK,
            scale,
            window: self.window,
        };
        let mut expected = vec![0f32; q.len()];
        cpu::paged_attention(KernelPath::Scalar, &q, (&k_cache, &v_cache), &meta, params, &mut expected);

        let mut input = Vec::new();
        let t = meta.num_tokens();
        put_u32s(&mut input, &[dtype.flag(), d as u32, h as u32, kvh as u32, num_blocks as u32]);
        put_u32s(&mut input, &[meta.max_blocks as u32, meta.num_seqs() as u32, t as u32, self.window as u32]);
        input.extend(scale.to_le_bytes());
        for values in [&q, &k_cache, &v_cache] {
            put_values(&mut input, values, dtype);
        }
        for values in [&meta.block_tables, &meta.cu_query_lens, &meta.context_lens] {
            put_u32s(&mut input, values);
        }
        (input, expected)
    }

    /// Runs the case on `driver`: the largest absolute error, or why it failed.
    fn run(&self, driver: &Driver, seed: u64) -> Result<f32, String> {
        let (input, expected) = self.build(seed);
        let got = get_values(&driver.run("attention", &input)?, self.dtype);
        if got.len() != expected.len() {
            return Err(format!("{} outputs, expected {}", got.len(), expected.len()));
        }
        let mut worst = 0f32;
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let err = (g - e).abs();
            if err.is_nan() || err > self.dtype.tolerance() {
                let (tok, rest) = (i / (self.heads * self.dim), i % (self.heads * self.dim));
                return Err(format!(
                    "{self:?}: output (token {tok}, head {}, elem {}) is {g}, reference {e}",
                    rest / self.dim,
                    rest % self.dim
                ));
            }
            worst = worst.max(err);
        }
        Ok(worst)
    }
}

/// Runs every combination of the given shapes, both dtypes, and reports the worst error per dtype.
fn check_all(build: Build, pairs: &[(usize, usize)], dims: &[usize], seqs: &[(usize, usize)], window: usize) {
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let mut worst = 0f32;
        for (i, &(heads, kv_heads)) in pairs.iter().enumerate() {
            for &dim in dims {
                let case = Case { heads, kv_heads, dim, seqs: seqs.to_vec(), window, dtype };
                let seed = (i * 1000 + dim + window) as u64;
                worst = worst.max(case.run(driver(build), seed).unwrap_or_else(|e| panic!("{e}")));
            }
        }
        println!(
            "{dtype:?}: max abs error {worst:.2e} (tolerance {:.0e}) over {} cases",
            dtype.tolerance(),
            pairs.len() * dims.len()
        );
    }
}

/// GQA ratios 1, 3, 4, 8 and 16 (16 > the decode kernel's 8 heads per threadgroup).
const GQA: [(usize, usize); 5] = [(4, 4), (9, 3), (8, 2), (16, 2), (16, 1)];
const DIMS: [usize; 3] = [64, 128, 256];

#[test]
fn decode_matches_the_cpu_reference_for_every_gqa_ratio_head_dim_and_dtype() {
    // Partial and full blocks, one and several 512-position partitions.
    let seqs = [(1, 1), (15, 1), (16, 1), (17, 1), (300, 1), (513, 1), (1100, 1)];
    check_all(Build::Plain, &GQA, &DIMS, &seqs, 0);
}

#[test]
fn prefill_chunks_mixed_with_decodes_match_the_cpu_reference() {
    // Whole prompts, chunks after a cached prefix, speculative-verification sizes and decodes in one call.
    let seqs = [(7, 7), (61, 61), (100, 39), (33, 1), (530, 17), (16, 16), (20, 4)];
    check_all(Build::Plain, &GQA, &DIMS, &seqs, 0);
}

#[test]
fn the_sliding_window_limits_what_decode_and_prefill_see() {
    for window in [1, 5, 16, 40, 600] {
        check_all(Build::Plain, &[(8, 2), (9, 3)], &[64, 256], &[(70, 1), (90, 30), (10, 10), (1100, 1)], window);
    }
}

#[test]
fn the_kernels_are_free_of_data_races_under_thread_sanitizer() {
    let seqs = [(40, 1), (600, 1), (45, 13), (9, 9)];
    check_all(Build::ThreadSanitizer, &[(9, 3), (8, 1)], &DIMS, &seqs, 0);
    check_all(Build::ThreadSanitizer, &[(8, 2)], &[128], &seqs, 20);
}

#[test]
fn kv_write_scatters_rows_into_their_slots() {
    for (dtype, seed) in [(Dtype::F16, 1u64), (Dtype::Bf16, 2)] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (tokens, row, slots) = (37usize, 3 * 128, 8 * BLOCK);
        let src = random(&mut rng, tokens * row, dtype);
        let mut order: Vec<u32> = (0..slots as u32).collect();
        order.shuffle(&mut rng);
        let mapping = &order[..tokens];
        let cache = random(&mut rng, slots * row, dtype);
        let mut expected = cache.clone();
        cpu::kv_write(&src, mapping, &mut expected, row);
        let mut input = Vec::new();
        put_u32s(&mut input, &[dtype.flag(), row as u32, slots as u32, tokens as u32]);
        put_values(&mut input, &src, dtype);
        put_u32s(&mut input, mapping);
        put_values(&mut input, &cache, dtype);
        for build in [Build::Plain, Build::ThreadSanitizer] {
            let got = get_values(&driver(build).run("kv_write", &input).unwrap(), dtype);
            assert!(got == expected, "{dtype:?}: kv_write wrote other values than the reference");
        }
    }
}

/// A deliberately broken copy of a kernel file: `from` (which must occur exactly once) becomes `to`.
struct Mutation {
    name: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
}

/// Builds the mutated kernels and runs `cases`; the harness must notice (an error or a wrong output).
fn assert_caught(m: &Mutation, build: Build, cases: &[Case]) {
    let source = std::fs::read_to_string(format!("{KERNELS}/{}", m.file)).unwrap();
    assert_eq!(source.matches(m.from).count(), 1, "mutation {}: the kernel no longer has {:?}", m.name, m.from);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("metal-emu").join(format!("mutated-{}", m.name));
    std::fs::create_dir_all(&dir).unwrap();
    let mutated = source.replacen(m.from, m.to, 1);
    if std::fs::read_to_string(dir.join(m.file)).ok().as_deref() != Some(&mutated) {
        std::fs::write(dir.join(m.file), mutated).unwrap();
    }
    let broken = Driver::build(&format!("driver-{}", m.name), &[&dir], build);
    for case in cases {
        assert!(case.run(driver(build), 7).is_ok(), "the intact kernels fail {case:?}");
        match case.run(&broken, 7) {
            Err(why) => println!("mutation {} caught: {}", m.name, why.lines().next().unwrap_or_default()),
            Ok(err) => panic!("mutation {} went unnoticed on {case:?} (max error {err})", m.name),
        }
    }
}

fn mixed_case(heads: usize, kv_heads: usize, dim: usize) -> Case {
    Case { heads, kv_heads, dim, seqs: vec![(40, 1), (600, 1), (45, 13), (9, 9)], window: 0, dtype: Dtype::F16 }
}

#[test]
fn a_removed_barrier_is_caught_as_a_data_race() {
    let m = Mutation {
        name: "no-barrier-after-key-staging",
        file: "paged_attention.metal",
        from: "        threadgroup_barrier(mem_flags::mem_threadgroup);\n\n        // S (8 rows",
        to: "\n        // S (8 rows",
    };
    assert_caught(&m, Build::ThreadSanitizer, &[mixed_case(8, 2, 64)]);
    let m = Mutation {
        name: "no-barrier-after-decode-scores",
        file: "paged_attention.metal",
        from: "            partial_tg[h][lane] = s[h];\n        }\n        threadgroup_barrier(mem_flags::mem_threadgroup);",
        to: "            partial_tg[h][lane] = s[h];\n        }",
    };
    assert_caught(&m, Build::ThreadSanitizer, &[mixed_case(8, 2, 64)]);
}

#[test]
fn an_off_by_one_in_the_block_table_walk_is_caught() {
    let decode = Mutation {
        name: "decode-skips-last-block",
        file: "paged_attention.metal",
        from: "b * BLOCK_SIZE < end; ++b",
        to: "(b + 1) * BLOCK_SIZE < end; ++b",
    };
    assert_caught(&decode, Build::Plain, &[mixed_case(8, 2, 64)]);
    let prefill = Mutation {
        name: "prefill-skips-last-block",
        file: "paged_attention.metal",
        from: "b * BLOCK_SIZE <= last; ++b",
        to: "(b + 1) * BLOCK_SIZE <= last; ++b",
    };
    assert_caught(&prefill, Build::Plain, &[mixed_case(8, 2, 64)]);
}

#[test]
fn a_wrong_gqa_head_mapping_is_caught() {
    // Query head h read against KV head h % num_kv_heads instead of h / group.
    let decode = Mutation {
        name: "decode-interleaved-heads",
        file: "paged_attention.metal",
        from: "row * p.num_heads + kv_head * group + head0 + h) * D;",
        to: "row * p.num_heads + (head0 + h) * p.num_kv_heads + kv_head) * D;",
    };
    assert_caught(&decode, Build::Plain, &[mixed_case(9, 3, 64)]);
    let prefill = Mutation {
        name: "prefill-interleaved-heads",
        file: "paged_attention.metal",
        from: "p.num_heads + kv_head * group + f % group) * D;\n        q_tg[i]",
        to: "p.num_heads + (f % group) * p.num_kv_heads + kv_head) * D;\n        q_tg[i]",
    };
    assert_caught(&prefill, Build::Plain, &[mixed_case(9, 3, 64)]);
}
