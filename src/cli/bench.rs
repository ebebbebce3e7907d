//! `bodega bench`: flags and scenario files in, a progress bar on stderr while it runs, tables on
//! stdout and `--json` / `--csv` files out. The measuring itself is `crate::bench`.

use super::load::{load, load_synthetic, model_file, EngineArgs};
use super::{interrupt_flag, GlobalArgs, Interrupted, UsageError};
use crate::bench::config::{OneOrMany, Settings};
use crate::bench::driver::Bench;
use crate::bench::http::HttpTarget;
use crate::bench::load::OnDone;
use crate::bench::plan::Plan;
use crate::bench::report::{mean_and_std, Report, TargetInfo};
use crate::bench::resources::{measure_cpu_bandwidth, Machine};
use crate::bench::target::Target;
use crate::model::load::synthetic::SyntheticSpec;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const EXAMPLES: &str = "\
Examples:
  bodega bench smollm2-135m --concurrency 1,4,16
  bodega bench smollm2-135m --config decode-sweep --json sweep.json
  bodega bench smollm2-135m --depth 0,512,1024 --input-len 512 --output-len 128
  bodega bench smollm2-135m --request-rate 2,4 --burstiness 0.5 --slo ttft=500ms,tpot=50ms
  bodega bench smollm2-135m --url http://127.0.0.1:8080 --vs http://127.0.0.1:8081 --concurrency 4
  bodega bench smollm2-135m --concurrency 8 --check
  bodega bench smollm2-135m --config bench-configs/copy-edit.toml --speculative ngram --spec-compare";

/// Scenarios shipped in `bench-configs/`, built in so that `--config NAME` works wherever bodega is
/// installed.
const SHIPPED: [(&str, &str); 5] = [
    ("decode-sweep", include_str!("../../bench-configs/decode-sweep.toml")),
    ("chat-mix", include_str!("../../bench-configs/chat-mix.toml")),
    ("prefix-share", include_str!("../../bench-configs/prefix-share.toml")),
    ("long-prefill", include_str!("../../bench-configs/long-prefill.toml")),
    ("single-stream", include_str!("../../bench-configs/single-stream.toml")),
];

/// Flags of `bodega bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model: runs in this process, or, with --url, gives the tokenizer for the prompts.
    /// Example: smollm2-135m
    #[arg(required_unless_present = "synthetic")]
    model: Option<String>,
    /// Instead of a model file: random weights of a named shape built on the device, with a synthetic
    /// vocabulary (speed does not depend on weight values): llama-3.2-1b, llama-3.2-3b or
    /// llama-3.1-8b, optionally `:f16` (default), `:bf16`, `:q8_0` or `:q4_k`.
    /// Example: --synthetic llama-3.2-1b:q8_0
    #[arg(long, value_name = "SHAPE[:TYPE]", conflicts_with_all = ["model", "url"])]
    synthetic: Option<SyntheticSpec>,
    /// Benchmark an OpenAI-compatible server instead of the in-process engine.
    /// Example: --url http://127.0.0.1:8080
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// A second server to compare with, run interleaved on the same prompts; prints B/A ratios.
    /// Example: --vs http://127.0.0.1:8081
    #[arg(long, value_name = "URL")]
    vs: Option<String>,
    /// The `model` name sent to servers (default: the first one their /v1/models lists).
    /// Example: --served-model smollm2
    #[arg(long, value_name = "NAME")]
    served_model: Option<String>,
    /// Bearer key for servers that need one. Example: --api-key secret
    #[arg(long, value_name = "KEY", env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A scenario: a TOML file, or a shipped one (decode-sweep, chat-mix, prefix-share, long-prefill,
    /// single-stream). Flags given here override it. Example: --config decode-sweep
    #[arg(long, value_name = "FILE|NAME")]
    config: Option<String>,
    /// Prompt tokens of each random prompt (default 128). Example: --input-len 512
    #[arg(long, value_name = "N")]
    input_len: Option<usize>,
    /// Tokens generated per request, EOS ignored (default 128). Example: --output-len 256
    #[arg(long, value_name = "N")]
    output_len: Option<usize>,
    /// Vary lengths uniformly within ±RATIO of the given ones. Example: --range-ratio 0.5
    #[arg(long, value_name = "RATIO")]
    range_ratio: Option<f64>,
    /// A random prefix of N tokens shared by every prompt (shows the prefix cache).
    /// Example: --prefix-len 1024
    #[arg(long, value_name = "N")]
    prefix_len: Option<usize>,
    /// Prompts from a JSONL file: {"prompt": "..."} or {"messages": [...]} per line, optional
    /// "output_len". Example: --dataset prompts.jsonl
    #[arg(long, value_name = "FILE")]
    dataset: Option<PathBuf>,
    /// Sampling temperature of every request (default 0: greedy). Above 0 requests sample with
    /// top-k 40, top-p 0.95 and seed 0, in process and sent to servers alike. Example: --temperature 0.8
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    /// Requests kept in flight (closed loop); a list sweeps. Example: --concurrency 1,2,4,8
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Requests per second (open loop); a list sweeps. With one --concurrency value, that caps
    /// requests in flight. Example: --request-rate 1,2,4
    #[arg(long, value_name = "R[,R...]", value_delimiter = ',')]
    request_rate: Option<Vec<f64>>,
    /// Arrival burstiness: gamma shape of the gaps (1 = Poisson, below 1 burstier).
    /// Example: --burstiness 0.5
    #[arg(long, value_name = "B")]
    burstiness: Option<f64>,
    /// Requests per row (default: 10 × concurrency). Example: --num-prompts 100
    #[arg(long, value_name = "N")]
    num_prompts: Option<usize>,
    /// Warm-up requests per target, not counted (default 2). Example: --warmup 0
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// Runs of every row, reported as mean ± std. Example: --repeat 3
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Single-stream prompt (--input-len) and decode (--output-len) speed with this many tokens
    /// already in context, like llama-bench's -d. Example: --depth 0,1024,4096
    #[arg(long, value_name = "D[,D...]", value_delimiter = ',')]
    depth: Option<Vec<usize>>,
    /// Seed of the random prompts and arrivals (default 0). Example: --seed 7
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Goodput objectives (ms unless a unit is given). Example: --slo ttft=500ms,tpot=50ms
    #[arg(long, value_name = "SPEC")]
    slo: Option<String>,
    /// With --speculative: run every row on the one loaded engine as A with speculative decoding off
    /// and B with it on, interleaved on identical prompts, each run with a cold prefix cache; prints
    /// B/A ratios. Example: --speculative ngram --spec-compare
    #[arg(long, requires = "speculative", conflicts_with_all = ["url", "vs"])]
    spec_compare: bool,
    /// Also run every prompt alone and check that outputs under load are the same (greedy, or sampled
    /// with the same seed); exit 1 on a mismatch. Example: --check
    #[arg(long)]
    check: bool,
    /// Peak memory bandwidth of the device in GB/s (default: Apple's published figure on a Mac's GPU,
    /// else measured on the CPU).
    /// Example: --peak-bandwidth 3350
    #[arg(long, value_name = "GB/S")]
    peak_bandwidth: Option<f64>,
    /// Write the full report as JSON (schema: docs/bench-schema.json). Example: --json out.json
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the table rows as CSV. Example: --csv out.csv
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

impl BenchArgs {
    /// The flags that map onto scenario keys.
    fn settings(&self) -> Settings {
        Settings {
            input_len: self.input_len,
            output_len: self.output_len,
            range_ratio: self.range_ratio,
            prefix_len: self.prefix_len,
            dataset: self.dataset.clone(),
            temperature: self.temperature,
            concurrency: self.concurrency.clone().map(OneOrMany::Many),
            request_rate: self.request_rate.clone().map(OneOrMany::Many),
            burstiness: self.burstiness,
            num_prompts: self.num_prompts,
            warmup: self.warmup,
            repeat: self.repeat,
            depth: self.depth.clone().map(OneOrMany::Many),
            seed: self.seed,
            slo: self.slo.clone(),
            ..Settings::default()
        }
    }
}

/// Runs `bodega bench`.
pub fn run(args: BenchArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let settings = match &args.config {
        Some(config) => scenario(config)?.overridden_by(args.settings()),
        None => args.settings(),
    };
    let plan = Plan::resolve(settings).map_err(|e| UsageError(e.to_string()))?;
    if args.peak_bandwidth.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
        return Err(UsageError("--peak-bandwidth must be a positive number of GB/s".into()).into());
    }
    if args.url.is_some() && args.url == args.vs {
        return Err(UsageError("--vs names the same server as --url".into()).into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(bench(args, plan, global))
}

/// A scenario from a path, or one of the shipped ones by name.
fn scenario(config: &str) -> anyhow::Result<Settings> {
    let path = Path::new(config);
    if path.exists() {
        return Ok(Settings::from_file(path)?);
    }
    let name = config.trim_end_matches(".toml").rsplit('/').next().unwrap_or(config);
    match SHIPPED.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => toml::from_str(text).with_context(|| format!("shipped scenario {name}")),
        None => Err(UsageError(format!(
            "no scenario '{config}': give a TOML file or one of {}",
            SHIPPED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))
        .into()),
    }
}

async fn bench(args: BenchArgs, plan: Plan, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    let mut infos = Vec::new();
    // A Mac GPU's published peak bandwidth, from the chip table.
    let mut gpu_peak = None;
    let tokenizer = match &args.url {
        Some(url) => {
            let http = HttpTarget::connect(url, args.served_model.clone(), args.api_key.as_deref()).await?;
            infos.push(http_info("A", &http));
            targets.push(("A".to_string(), Arc::new(Target::Http(http))));
            let model = args.model.as_deref().unwrap_or_default();
            let path = tokio::task::block_in_place(|| model_file(model, global))?;
            Arc::new(Tokenizer::from_path(&path)?)
        }
        None => {
            let loaded = tokio::task::block_in_place(|| match &args.synthetic {
                Some(spec) => load_synthetic(spec, &args.engine, global),
                None => load(args.model.as_deref().unwrap_or_default(), &args.engine, global),
            })?;
            let info = |label: &str, engine: Option<Value>| TargetInfo {
                label: label.into(),
                kind: "in-process".into(),
                url: None,
                model: loaded.path.display().to_string(),
                quant: loaded.quant.clone(),
                device: Some(match &loaded.gpu {
                    Some(gpu) => format!("{} ({gpu})", crate::device::describe(global.device)),
                    None => {
                        format!("{} ({} threads)", crate::device::describe(global.device), rayon::current_num_threads())
                    }
                }),
                engine,
            };
            gpu_peak = loaded.gpu.as_deref().and_then(crate::bench::apple_chips::peak_bandwidth_gb_s);
            let flags = serde_json::to_value(&args.engine).ok();
            let engine = Arc::new(loaded.engine);
            if args.spec_compare {
                let mut plain = flags.clone();
                if let Some(Value::Object(map)) = &mut plain {
                    map.insert("speculative".into(), Value::Null);
                }
                infos.push(info("A", plain));
                infos.push(info("B", flags));
                let (a, b) = (engine.clone(), engine);
                targets.push(("A".to_string(), Arc::new(Target::InProcessSpeculating { engine: a, speculate: false })));
                targets.push(("B".to_string(), Arc::new(Target::InProcessSpeculating { engine: b, speculate: true })));
            } else {
                infos.push(info("A", flags));
                targets.push(("A".to_string(), Arc::new(Target::InProcess(engine))));
            }
            loaded.tokenizer
        }
    };
    if let Some(vs) = &args.vs {
        let http = HttpTarget::connect(vs, args.served_model.clone(), args.api_key.as_deref()).await?;
        infos.push(http_info("B", &http));
        targets.push(("B".to_string(), Arc::new(Target::Http(http))));
    }
    let in_process = args.url.is_none();
    let peak_bandwidth = match args.peak_bandwidth {
        Some(given) => Some((given, "given")),
        None if gpu_peak.is_some() => gpu_peak.map(|peak| (peak, "published")),
        None if in_process => Some((tokio::task::block_in_place(measure_cpu_bandwidth), "measured")),
        None => None,
    };
    let machine = Machine::here(peak_bandwidth);
    let bench = Bench { plan, targets, tokenizer, check: args.check, peak_bandwidth_gb_s: peak_bandwidth.map(|p| p.0) };

    let progress = progress_bar(bench.total_requests(), global.quiet);
    let on_done: OnDone = {
        let progress = progress.clone();
        Arc::new(move || progress.inc(1))
    };
    let on_run = |line: &str| match global.verbose {
        true if progress.is_hidden() => eprintln!("{line}"),
        true => progress.println(line),
        false => {}
    };
    let stop = interrupt_flag();
    let outcome = bench.run(&stop, &on_done, &on_run).await;
    progress.finish_and_clear();
    let outcome = outcome?;
    let report = Report::new(machine, infos, bench.plan, outcome.runs, outcome.single_stream, outcome.interrupted);
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report.to_csv()?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.interrupted {
        return Err(Interrupted.into());
    }
    verdict(&report)
}

fn http_info(label: &str, http: &HttpTarget) -> TargetInfo {
    TargetInfo {
        label: label.into(),
        kind: "http".into(),
        url: Some(http.url().to_string()),
        model: http.model.clone(),
        quant: None,
        device: None,
        engine: None,
    }
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Warnings that make a benchmark's numbers suspect, and the exit status `--check` asks for.
fn verdict(report: &Report) -> anyhow::Result<()> {
    for row in &report.rows {
        let count = |key: &str| row.mean.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        if count("stopped_early") > 0.0 {
            eprintln!(
                "warning: target {} stopped early on {} requests of {} (it may not honour ignore_eos): unequal work",
                row.target,
                count("stopped_early"),
                row.row
            );
        }
        if count("failed") > 0.0 {
            let first_error = report
                .runs
                .iter()
                .filter(|r| r.target == row.target && r.row == row.row)
                .flat_map(|r| &r.classes)
                .find_map(|c| c.summary.first_error.as_deref())
                .unwrap_or("no message");
            eprintln!(
                "warning: {} requests of {} failed on target {} (first error: {first_error})",
                count("failed"),
                row.row,
                row.target
            );
        }
    }
    if !report.runs.is_empty() && report.runs.iter().all(|r| r.classes.iter().all(|c| c.summary.completed == 0)) {
        bail!("every request failed; see the warnings above");
    }
    let mismatches: usize = report.runs.iter().filter_map(|r| r.check.as_ref()).map(|c| c.mismatches.len()).sum();
    if mismatches > 0 {
        bail!("--check: {mismatches} outputs under load differ from the same prompt run alone");
    }
    Ok(())
}

fn print_report(report: &Report) {
    if let Some(description) = &report.plan.description {
        println!("{description}");
    }
    for t in &report.targets {
        let what = [Some(t.model.as_str()), t.quant.as_deref(), t.device.as_deref(), t.url.as_deref()];
        println!("{}: {} — {}", t.label, t.kind, what.iter().flatten().copied().collect::<Vec<_>>().join(", "));
    }
    if !report.rows.is_empty() {
        println!("{}", load_table(report));
    }
    if !report.ratios.is_empty() {
        println!("{}", ratio_table(report));
    }
    if !report.single_stream.is_empty() {
        println!("{}", depth_table(report));
    }
    let checks: Vec<_> = report.runs.iter().filter_map(|r| r.check.as_ref().map(|c| (r, c))).collect();
    if !checks.is_empty() {
        let compared: usize = checks.iter().map(|(_, c)| c.compared).sum();
        let bad: usize = checks.iter().map(|(_, c)| c.mismatches.len()).sum();
        println!("check: {compared} greedy outputs under load compared with the same prompt alone: {bad} differ");
        for (run, c) in checks {
            for m in &c.mismatches {
                println!(
                    "  target {} {} {} prompt {}: first difference at byte {}",
                    run.target, run.row, m.class, m.prompt_index, m.first_difference_at
                );
            }
        }
    }
}

/// A cell: the mean, with ± std when the row was repeated.
fn cell(repeats: usize, source: (&Value, &Value), pointer: &str, decimals: usize) -> Cell {
    let mean = source.0.pointer(pointer).and_then(Value::as_f64);
    let std = source.1.pointer(pointer).and_then(Value::as_f64);
    let text = match (mean, std) {
        (None, _) => "—".to_string(),
        (Some(m), Some(s)) if repeats > 1 => format!("{m:.decimals$} ± {s:.decimals$}"),
        (Some(m), _) => format!("{m:.decimals$}"),
    };
    Cell::new(text).set_alignment(CellAlignment::Right)
}

fn new_table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(header);
    table
}

fn load_table(report: &Report) -> Table {
    let two = report.targets.len() > 1;
    let mix = report.rows.iter().any(|r| r.class != "all");
    let slo = report.plan.slo.is_set();
    let engine = report.rows.iter().any(|r| r.engine_mean.is_some());
    let mut header = vec![];
    header.extend(two.then_some("target"));
    header.push("row");
    header.extend(mix.then_some("class"));
    header.extend(["done", "req/s", "out tok/s", "total tok/s", "peak tok/s", "TTFT ms", "TTFT p99", "TPOT ms"]);
    header.extend(["ITL p99", "E2E ms", "E2E p99", "cache hit"]);
    header.extend(slo.then_some("goodput"));
    if engine {
        header.extend(["prefill tok/s", "decode tok/s", "decode BW"]);
    }
    let spec = report
        .rows
        .iter()
        .any(|r| r.engine_mean.as_ref().and_then(|e| e.get("spec_acceptance_rate")).is_some_and(|v| !v.is_null()));
    if spec {
        header.extend(["spec accept", "spec len"]);
    }
    let mut table = new_table(header);
    for row in &report.rows {
        let s = (&row.mean, &row.std);
        let mut cells = Vec::new();
        cells.extend(two.then(|| Cell::new(&row.target)));
        cells.push(Cell::new(&row.row));
        cells.extend(mix.then(|| Cell::new(&row.class)));
        let done = row.mean.get("completed").and_then(Value::as_f64).unwrap_or(0.0);
        let failed = row.mean.get("failed").and_then(Value::as_f64).unwrap_or(0.0);
        let done = if failed > 0.0 { format!("{done:.0} ({failed:.0} failed)") } else { format!("{done:.0}") };
        cells.push(Cell::new(done).set_alignment(CellAlignment::Right));
        for (pointer, decimals) in [
            ("/request_throughput", 2),
            ("/output_throughput", 1),
            ("/total_token_throughput", 1),
            ("/max_output_tokens_per_s", 0),
            ("/mean_ttft_ms", 1),
            ("/p99_ttft_ms", 1),
            ("/mean_tpot_ms", 2),
            ("/p99_itl_ms", 2),
            ("/mean_e2el_ms", 0),
            ("/p99_e2el_ms", 0),
        ] {
            cells.push(cell(row.repeats, s, pointer, decimals));
        }
        let hit = row.mean.get("prefix_cache_hit_rate").and_then(Value::as_f64);
        cells.push(
            Cell::new(hit.map_or("—".into(), |h| format!("{:.0}%", h * 100.0))).set_alignment(CellAlignment::Right),
        );
        if slo {
            cells.push(cell(row.repeats, s, "/request_goodput", 2));
        }
        if engine {
            let e = (row.engine_mean.as_ref().unwrap_or(&Value::Null), row.engine_std.as_ref().unwrap_or(&Value::Null));
            cells.push(cell(row.repeats, e, "/prefill_tok_s", 1));
            cells.push(cell(row.repeats, e, "/decode_tok_s", 1));
            let bw = e.0.get("decode_bandwidth_gb_s").and_then(Value::as_f64);
            let pct = e.0.get("decode_bandwidth_pct").and_then(Value::as_f64);
            let text = match (bw, pct) {
                (Some(b), Some(p)) => format!("{b:.1} GB/s ({p:.0}%)"),
                (Some(b), None) => format!("{b:.1} GB/s"),
                _ => "—".into(),
            };
            cells.push(Cell::new(text).set_alignment(CellAlignment::Right));
        }
        if spec {
            let e = (row.engine_mean.as_ref().unwrap_or(&Value::Null), row.engine_std.as_ref().unwrap_or(&Value::Null));
            let rate = e.0.get("spec_acceptance_rate").and_then(Value::as_f64);
            cells.push(
                Cell::new(rate.map_or("—".into(), |r| format!("{:.0}%", r * 100.0)))
                    .set_alignment(CellAlignment::Right),
            );
            cells.push(cell(row.repeats, e, "/spec_mean_accepted_length", 2));
        }
        table.add_row(cells);
    }
    table
}

fn ratio_table(report: &Report) -> Table {
    let names = ["output_throughput", "mean_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "mean_e2el_ms"];
    let mut header = vec!["B/A", "class"];
    header.extend(names);
    let mut table = new_table(header);
    for r in &report.ratios {
        let mut cells = vec![Cell::new(&r.row), Cell::new(&r.class)];
        for name in names {
            let text = r.b_over_a.get(name).map_or("—".into(), |x| format!("{x:.2}×"));
            cells.push(Cell::new(text).set_alignment(CellAlignment::Right));
        }
        table.add_row(cells);
    }
    table
}

fn depth_table(report: &Report) -> Table {
    let mut table = new_table(vec!["target", "depth", "pp tokens", "pp tok/s", "tg tokens", "tg tok/s"]);
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in &report.single_stream {
        if !keys.contains(&(r.target.clone(), r.depth)) {
            keys.push((r.target.clone(), r.depth));
        }
    }
    for (target, depth) in keys {
        let runs: Vec<Value> = report
            .single_stream
            .iter()
            .filter(|r| r.target == target && r.depth == depth)
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        let (mean, std) = mean_and_std(&runs);
        let (s, n) = ((&mean, &std), runs.len());
        table.add_row(vec![
            Cell::new(&target),
            Cell::new(depth),
            cell(n, s, "/pp_tokens", 0),
            cell(n, s, "/prefill_tok_s", 1),
            cell(n, s, "/tg_tokens", 0),
            cell(n, s, "/decode_tok_s", 1),
        ]);
    }
    table
}
