//! `bodega bench` end to end on the demo model: the in-process engine and serve-lite over HTTP agree on
//! token counts for the same workload, `--check` finds no mismatch, reports validate against
//! `docs/bench-schema.json`, scenarios with classes and datasets run, and bad settings fail clearly.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    common::smollm2_path();
    Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args(["bench", "smollm2-135m", "--kv-memory", "128M", "--warmup", "1"])
        .args(args)
        .output()
        .expect("run bodega bench")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a benchmark that must succeed and returns its JSON report, checked against the schema.
fn report(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = bench(&[args, &["--json", json.to_str().unwrap()]].concat());
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_valid(&report);
    report
}

fn assert_valid(report: &Value) {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(report).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "report does not match docs/bench-schema.json:\n{}", errors.join("\n"));
}

fn class<'a>(report: &'a Value, target: &str) -> &'a Value {
    let run = report["runs"].as_array().unwrap().iter().find(|r| r["target"] == target).expect("a run of the target");
    &run["classes"][0]
}

/// Four random 24-token prompts, 6 tokens each, two at a time, in process (A) and against a
/// serve-lite (B), with `--check` and `extra` flags: the report, after asserting that both targets
/// completed every request with all its tokens (EOS is ignored) and that `--check` found every reply
/// under load equal to the same prompt's reply alone.
fn against_serve_lite(extra: &[&str]) -> Value {
    let server = common::serve_lite(&[]);
    let url = format!("http://127.0.0.1:{}", server.port);
    let args = ["--vs", &url, "--concurrency", "2", "--num-prompts", "4", "--input-len", "24", "--output-len", "6"];
    let report = report(&[&args[..], &["--check"], extra].concat());
    for target in ["A", "B"] {
        let side = class(&report, target);
        assert_eq!((&side["completed"], &side["failed"]), (&Value::from(4), &Value::from(0)), "{side}");
        assert_eq!(side["total_output_tokens"], 24, "EOS is ignored: every request makes 6 tokens");
    }
    for run in report["runs"].as_array().unwrap() {
        assert_eq!(run["check"]["compared"], 4, "{run}");
        assert_eq!(run["check"]["mismatches"].as_array().unwrap().len(), 0, "{run}");
    }
    report
}

#[test]
fn in_process_and_serve_lite_agree_on_token_counts() {
    let report = against_serve_lite(&[]);
    let (a, b) = (class(&report, "A"), class(&report, "B"));
    for side in [a, b] {
        assert!(side["mean_ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(side["mean_tpot_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(a["total_input_tokens"], b["total_input_tokens"], "same prompts, same tokenizer, same counts");
    let input = a["total_input_tokens"].as_u64().unwrap();
    assert!((4 * 20..=4 * 28).contains(&input), "random prompts are about 24 tokens each: {input}");
    assert_eq!(report["targets"][1]["kind"], "http");
    assert!(report["ratios"][0]["b_over_a"]["output_throughput"].as_f64().unwrap() > 0.0);
    let engine = &report["runs"][0]["engine"];
    assert!(engine["decode_tok_s"].as_f64().unwrap() > 0.0, "{engine}");
    assert!(engine["decode_bandwidth_pct"].as_f64().unwrap() > 0.0, "{engine}");
    assert!(report["runs"][1]["engine"].is_null(), "a server's step timings are not ours to see");
    let workload = &report["plan"]["rows"][0]["classes"][0]["workload"];
    assert_eq!(workload["temperature"].as_f64(), Some(0.0), "greedy by default: {workload}");
}

/// `--temperature`: the plan records it, and both targets sample with the same settings (serve-lite
/// gets top-k, top-p and seed in the request), complete every request, and with one seed give a
/// sampled reply under load equal to the same prompt's reply alone (`--check`).
#[test]
fn sampled_requests_run_in_process_and_over_http() {
    let report = against_serve_lite(&["--temperature", "0.8"]);
    let workload = &report["plan"]["rows"][0]["classes"][0]["workload"];
    assert_eq!(workload["temperature"].as_f64(), Some(0.8), "{workload}");
}

#[test]
fn single_stream_depths_prefill_only_new_tokens() {
    let report = report(&["--depth", "0,48", "--input-len", "32", "--output-len", "4"]);
    let runs = report["single_stream"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["pp_tokens"], 32, "depth 0 prefills the whole prompt: {}", runs[0]);
    let deep = runs[1]["pp_tokens"].as_u64().unwrap();
    assert!((32..48).contains(&deep), "at depth 48 the cached full blocks are not prefilled again: {deep}");
    assert_eq!(runs[1]["tg_tokens"], 4);
    assert!(runs[1]["decode_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn scenario_classes_and_datasets_run_together() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        "{\"prompt\": \"The capital of France is\", \"output_len\": 3}\n\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}]}\n",
    )
    .unwrap();
    let scenario = dir.path().join("mix.toml");
    std::fs::write(
        &scenario,
        "description = \"a test mix\"\noutput-len = 5\n\
         [[class]]\nname = \"random\"\ninput-len = 16\nconcurrency = 2\nnum-prompts = 2\n\
         [[class]]\nname = \"dataset\"\ndataset = \"prompts.jsonl\"\nrequest-rate = 50\n",
    )
    .unwrap();
    let csv = dir.path().join("rows.csv");
    let report = report(&["--config", scenario.to_str().unwrap(), "--csv", csv.to_str().unwrap()]);
    let classes = report["runs"][0]["classes"].as_array().unwrap();
    assert_eq!(classes[0]["name"], "random");
    assert_eq!(classes[0]["total_output_tokens"], 10);
    assert_eq!(classes[1]["name"], "dataset");
    assert_eq!(classes[1]["completed"], 2, "the dataset has two prompts");
    assert_eq!(classes[1]["total_output_tokens"], 8, "3 from the line's output_len, 5 from the scenario");
    let csv = std::fs::read_to_string(csv).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("target,row,class,repeats,mean.completed"));
    assert_eq!(lines.count(), 2, "one CSV row per class");
}

#[test]
fn bad_settings_fail_with_one_clear_line() {
    let cases: [(&[&str], i32, &str); 6] = [
        (&["--concurrency", "0"], 2, "--concurrency must be at least 1"),
        (&["--temperature=-1"], 2, "--temperature must be 0 (greedy) or more"),
        (&["--config", "no-such-scenario"], 2, "no scenario 'no-such-scenario'"),
        (&["--depth", "0", "--concurrency", "2"], 2, "--depth measures one stream"),
        (&["--slo", "ttfb=3"], 2, "unknown objective 'ttfb'"),
        (&["--url", "http://127.0.0.1:9"], 1, "cannot connect"),
    ];
    for (args, code, message) in cases {
        let out = bench(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "concurency = 4\n").unwrap();
    let out = bench(&["--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown field `concurency`"), "{}", stderr(&out));
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"prompt\": 3}\n").unwrap();
    let out = bench(&["--dataset", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.jsonl line 1"), "{}", stderr(&out));
}

#[test]
fn shipped_scenarios_parse_and_resolve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-configs");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let settings = bodega::bench::config::Settings::from_file(&path).unwrap();
            bodega::bench::plan::Plan::resolve(settings).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        ["chat-mix", "copy-edit", "decode-sweep", "free-chat", "long-prefill", "prefix-share", "single-stream"]
    );
}

#[test]
fn ctrl_c_prints_what_finished_and_exits_130() {
    use std::io::{BufRead, BufReader};
    common::smollm2_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args(["-v", "bench", "smollm2-135m", "--kv-memory", "128M", "--warmup", "1"])
        .args(["--concurrency", "1,2", "--num-prompts", "2", "--input-len", "8", "--output-len", "4"])
        .args(["--repeat", "50"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until the first measured run finished, then press Ctrl-C.
    lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("A c=1:")).expect("a progress line");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("c=1"), "the finished runs are printed: {stdout}");
}
