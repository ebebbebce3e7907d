//! The benchmark's results in one serialisable report: every run as measured, rows averaged over
//! repetitions (mean and standard deviation of every number), B/A ratios when two targets ran, and
//! the machine, targets and plan that produced them. The JSON schema is `docs/bench-schema.json`;
//! keys follow vLLM's `bench serve` where they overlap. Schema changes add keys, never rename them.

use super::metrics::Summary;
use super::plan::Plan;
use super::resources::{EngineMetrics, Machine};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Bumped only when a key changes meaning (never for added keys).
pub const SCHEMA_VERSION: u32 = 1;

/// Metrics compared between targets: the ratio's name and a JSON pointer into a row's `mean`.
pub const RATIO_METRICS: [(&str, &str); 10] = [
    ("output_throughput", "/output_throughput"),
    ("total_token_throughput", "/total_token_throughput"),
    ("request_throughput", "/request_throughput"),
    ("max_output_tokens_per_s", "/max_output_tokens_per_s"),
    ("mean_ttft_ms", "/mean_ttft_ms"),
    ("p99_ttft_ms", "/p99_ttft_ms"),
    ("mean_tpot_ms", "/mean_tpot_ms"),
    ("p99_itl_ms", "/p99_itl_ms"),
    ("mean_e2el_ms", "/mean_e2el_ms"),
    ("p99_e2el_ms", "/p99_e2el_ms"),
];

/// One thing requests were sent to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetInfo {
    /// `A`, or `B` for `--vs`.
    pub label: String,
    /// `in-process` or `http`.
    pub kind: String,
    pub url: Option<String>,
    /// The model file (in-process) or the served model's name (http).
    pub model: String,
    /// The weights' main quantization type, when known.
    pub quant: Option<String>,
    /// `cpu (2 threads)`, ...; None for a server.
    pub device: Option<String>,
    /// The engine's settings (in-process).
    pub engine: Option<Value>,
}

/// Greedy outputs of a run compared with the same prompts run one at a time (`--check`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckResult {
    pub compared: usize,
    pub mismatches: Vec<Mismatch>,
}

/// A prompt whose output under load differed from its output alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    pub class: String,
    pub prompt_index: usize,
    /// Byte offset of the first difference.
    pub first_difference_at: usize,
}

/// One class's numbers in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassResult {
    pub name: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// One run of one row against one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    pub target: String,
    pub row: String,
    pub repeat: usize,
    pub classes: Vec<ClassResult>,
    pub engine: Option<EngineMetrics>,
    pub check: Option<CheckResult>,
}

/// A row of the table: one class of one row on one target, over its repetitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowAggregate {
    pub target: String,
    pub row: String,
    pub class: String,
    pub repeats: usize,
    /// Every number of the class's summary, averaged over repetitions.
    pub mean: Value,
    /// Their population standard deviations (0 for one repetition).
    pub std: Value,
    pub engine_mean: Option<Value>,
    pub engine_std: Option<Value>,
}

/// B ÷ A for the comparable metrics of one row and class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    pub row: String,
    pub class: String,
    pub b_over_a: BTreeMap<String, f64>,
}

/// One single-stream measurement at a depth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthRun {
    pub target: String,
    pub depth: usize,
    pub repeat: usize,
    /// New prompt tokens prefilled (prompt minus cached).
    pub pp_tokens: usize,
    pub prefill_tok_s: f64,
    pub tg_tokens: usize,
    pub decode_tok_s: f64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub bodega_version: String,
    pub git_commit: String,
    /// RFC 3339 time the benchmark finished.
    pub created: String,
    /// Ctrl-C stopped the benchmark; what finished is here.
    pub interrupted: bool,
    pub machine: Machine,
    pub targets: Vec<TargetInfo>,
    pub plan: Plan,
    pub runs: Vec<RunResult>,
    pub rows: Vec<RowAggregate>,
    pub ratios: Vec<Ratio>,
    pub single_stream: Vec<DepthRun>,
}

impl Report {
    /// Assembles the report, computing the aggregate rows and ratios from the runs.
    pub fn new(
        machine: Machine,
        targets: Vec<TargetInfo>,
        plan: Plan,
        runs: Vec<RunResult>,
        single_stream: Vec<DepthRun>,
        interrupted: bool,
    ) -> Self {
        let rows = aggregate_rows(&runs);
        let ratios = ratios(&rows);
        Report {
            schema_version: SCHEMA_VERSION,
            bodega_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("BODEGA_GIT_COMMIT").into(),
            created: chrono::Local::now().to_rfc3339(),
            interrupted,
            machine,
            targets,
            plan,
            runs,
            rows,
            ratios,
            single_stream,
        }
    }

    /// The aggregate rows as CSV: identifying columns, then `mean.*` and `std.*` of every number.
    pub fn to_csv(&self) -> crate::error::Result<String> {
        let mut out = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["target".to_string(), "row".into(), "class".into(), "repeats".into()];
        let mut written_header = false;
        for row in &self.rows {
            let mut fields = Vec::new();
            for (prefix, value) in
                [("mean", Some(&row.mean)), ("std", Some(&row.std)), ("engine_mean", row.engine_mean.as_ref())]
            {
                flatten(prefix, value.unwrap_or(&Value::Null), &mut fields);
            }
            if !written_header {
                header.extend(fields.iter().map(|(k, _)| k.clone()));
                out.write_record(&header).map_err(csv_error)?;
                written_header = true;
            }
            let mut record = vec![row.target.clone(), row.row.clone(), row.class.clone(), row.repeats.to_string()];
            record.extend(fields.into_iter().map(|(_, v)| v));
            out.write_record(&record).map_err(csv_error)?;
        }
        let bytes = out.into_inner().map_err(|e| crate::error::Error::Bench(e.to_string()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn csv_error(e: csv::Error) -> crate::error::Error {
    crate::error::Error::Bench(format!("cannot write CSV: {e}"))
}

/// `(dotted.key, text)` for every leaf of a JSON value, in key order; null leaves become "".
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| flatten(&format!("{prefix}.{k}"), v, out)),
        Value::Null => out.push((prefix.into(), String::new())),
        Value::String(s) => out.push((prefix.into(), s.clone())),
        other => out.push((prefix.into(), other.to_string())),
    }
}

fn aggregate_rows(runs: &[RunResult]) -> Vec<RowAggregate> {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for run in runs {
        for class in &run.classes {
            let key = (run.target.clone(), run.row.clone(), class.name.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys.into_iter()
        .map(|(target, row, class)| {
            let matching: Vec<&RunResult> = runs.iter().filter(|r| r.target == target && r.row == row).collect();
            let summaries: Vec<Value> = matching
                .iter()
                .flat_map(|r| r.classes.iter().filter(|c| c.name == class))
                .map(|c| serde_json::to_value(&c.summary).unwrap_or_default())
                .collect();
            let engines: Vec<Value> = matching
                .iter()
                .filter_map(|r| r.engine.as_ref())
                .map(|e| serde_json::to_value(e).unwrap_or_default())
                .collect();
            let (mean, std) = mean_and_std(&summaries);
            let engine = (!engines.is_empty()).then(|| mean_and_std(&engines));
            RowAggregate {
                target,
                row,
                class,
                repeats: summaries.len(),
                mean,
                std,
                engine_mean: engine.as_ref().map(|e| e.0.clone()),
                engine_std: engine.map(|e| e.1),
            }
        })
        .collect()
}

/// Mean and population standard deviation of every number found at the same place in `values`
/// (all the same shape); a place that is null in any value stays null.
pub fn mean_and_std(values: &[Value]) -> (Value, Value) {
    let Some(first) = values.first() else { return (Value::Null, Value::Null) };
    match first {
        Value::Object(map) => {
            let (mut means, mut stds) = (Map::new(), Map::new());
            for key in map.keys() {
                let column: Vec<Value> = values.iter().map(|v| v.get(key).cloned().unwrap_or(Value::Null)).collect();
                let (m, s) = mean_and_std(&column);
                means.insert(key.clone(), m);
                stds.insert(key.clone(), s);
            }
            (Value::Object(means), Value::Object(stds))
        }
        Value::Number(_) => {
            let Some(xs) = values.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>() else {
                return (Value::Null, Value::Null);
            };
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            (Value::from(mean), Value::from(var.sqrt()))
        }
        _ => (Value::Null, Value::Null),
    }
}

fn ratios(rows: &[RowAggregate]) -> Vec<Ratio> {
    rows.iter()
        .filter(|a| a.target == "A")
        .filter_map(|a| {
            let b = rows.iter().find(|b| b.target == "B" && b.row == a.row && b.class == a.class)?;
            let b_over_a = RATIO_METRICS
                .iter()
                .filter_map(|(name, pointer)| {
                    let (x, y) = (a.mean.pointer(pointer)?.as_f64()?, b.mean.pointer(pointer)?.as_f64()?);
                    (x > 0.0).then(|| (name.to_string(), y / x))
                })
                .collect();
            Some(Ratio { row: a.row.clone(), class: a.class.clone(), b_over_a })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mean_and_std_walk_nested_numbers() {
        let (m, s) =
            mean_and_std(&[json!({"a": 1.0, "b": {"c": 2}, "d": null}), json!({"a": 3.0, "b": {"c": 2}, "d": 5})]);
        assert_eq!(m, json!({"a": 2.0, "b": {"c": 2.0}, "d": null}));
        assert_eq!(s, json!({"a": 1.0, "b": {"c": 0.0}, "d": null}));
    }

    #[test]
    fn ratios_divide_b_by_a() {
        let row = |target: &str, tput: f64| RowAggregate {
            target: target.into(),
            row: "c=1".into(),
            class: "all".into(),
            repeats: 1,
            mean: json!({"output_throughput": tput, "mean_ttft_ms": 10.0}),
            std: Value::Null,
            engine_mean: None,
            engine_std: None,
        };
        let r = ratios(&[row("A", 50.0), row("B", 100.0)]);
        assert_eq!(r[0].b_over_a["output_throughput"], 2.0);
        assert_eq!(r[0].b_over_a["mean_ttft_ms"], 1.0);
    }
}
