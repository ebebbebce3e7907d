//! `bodega run` driven as a user drives it: the real binary, the real demo model, stdin and stdout.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

fn bodega() -> Command {
    common::smollm2_path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bodega"));
    cmd.env_remove("BODEGA_LOG");
    cmd
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child =
        bodega().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_with_stdin(args, b"")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Asserts a failure with exit code `code` and one `error:` line (plus an optional `hint:`).
fn assert_clean_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.lines().all(|l| l.starts_with("error: ") || l.starts_with("hint: ")), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "stderr: {}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

const HAIKU: &str = "Write a haiku about the sea.";
/// The "chat-system" reference case: its first greedy tokens lead their runner-up by 1.3 to 4.4
/// logits in the reference, far beyond what 8-bit activation rounding can move.
const SYSTEM: &str = "You are a concise assistant. Answer in one short sentence.";
const QUESTION: &str = "What is the capital of France?";

#[test]
fn greedy_chat_reply_uses_the_template_and_matches_the_reference_start() {
    let case = common::reference_case("chat-system");
    let args = ["run", "smollm2-135m", QUESTION, "--system", SYSTEM, "--temperature", "0", "--max-tokens", "4"];
    let v = json(&run(&[&args[..], &["--json"]].concat()));
    assert_eq!(common::ids(&v["prompt_ids"]), common::ids(&case["prompt_ids"]));
    // The first tokens are far from any near-tie in the reference: they must agree.
    assert_eq!(common::ids(&v["generated_ids"]), common::ids(&case["greedy_ids"])[..4]);
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], case["prompt_ids"].as_array().unwrap().len());
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["cached_tokens"], 0);
    for key in ["ttft_ms", "prefill_tok_s", "decode_tok_s", "total_ms"] {
        assert!(v["timings"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    // Without --system the template adds SmolLM2's default system message.
    let haiku = json(&run(&["run", "smollm2-135m", HAIKU, "--temperature", "0", "--max-tokens", "1", "--json"]));
    assert_eq!(common::ids(&haiku["prompt_ids"]), common::ids(&common::reference_case("chat-no-system")["prompt_ids"]));
}

#[test]
fn streamed_text_equals_the_json_text_and_stdin_equals_the_argument() {
    let args = ["run", "smollm2-135m", "--temperature", "0", "--max-tokens", "10"];
    let streamed = run(&[&args[..], &[HAIKU]].concat());
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    let from_stdin = run_with_stdin(&args, format!("{HAIKU}\n").as_bytes());
    let as_json = json(&run(&[&args[..], &[HAIKU, "--json"]].concat()));
    assert_eq!(stdout(&streamed), stdout(&from_stdin));
    assert_eq!(stdout(&streamed), format!("{}\n", as_json["text"].as_str().unwrap()));
    assert!(stderr(&streamed).is_empty(), "stderr must stay quiet: {}", stderr(&streamed));
}

#[test]
fn raw_mode_skips_the_chat_template() {
    let case = common::reference_case("plain-simple");
    let v = json(&run(&[
        "run",
        "smollm2-135m",
        "--raw",
        case["text"].as_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(common::ids(&v["prompt_ids"]), common::ids(&case["prompt_ids"]));
}

#[test]
fn a_stop_string_ends_the_reply_before_it() {
    let args = ["run", "smollm2-135m", QUESTION, "--system", SYSTEM, "--temperature", "0", "--max-tokens", "20"];
    let v = json(&run(&[&args[..], &["--stop", "Paris", "--json"]].concat()));
    assert_eq!(v["finish_reason"], "stop");
    let text = v["text"].as_str().unwrap();
    assert!(!text.contains("Paris") && !text.is_empty(), "{text:?}");
}

#[test]
fn the_same_seed_gives_the_same_sampled_reply() {
    let args = ["run", "smollm2-135m", HAIKU, "--temperature", "1.0", "--seed", "42", "--max-tokens", "12", "--json"];
    let a = json(&run(&args));
    let b = json(&run(&args));
    assert_eq!(a["generated_ids"], b["generated_ids"]);
}

#[test]
fn verbose_prints_a_stats_line_on_stderr_only() {
    let o = run(&["run", "smollm2-135m", HAIKU, "--temperature", "0", "--max-tokens", "4", "-v"]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(err.contains("prompt: ") && err.contains("tok/s") && err.contains("TTFT"), "{err}");
    assert!(!stdout(&o).contains("tok/s"));
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = bodega()
        .args([
            "run",
            "smollm2-135m",
            "Tell me a long story about a dragon.",
            "--max-tokens",
            "200",
            "--temperature",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(stderr(&o).is_empty(), "stderr: {}", stderr(&o));
}

#[test]
fn an_unknown_model_name_lists_what_is_available() {
    let o = run(&["run", "smolm2", "hi"]);
    assert_clean_error(&o, 1, "no model named 'smolm2'");
    assert!(stderr(&o).contains("hint: did you mean smollm2-135m?"), "{}", stderr(&o));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    assert_clean_error(&run(&["run", "/nonexistent/model.gguf", "hi"]), 1, "/nonexistent/model.gguf");
}

#[test]
fn a_file_that_is_not_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, "hello").unwrap();
    assert_clean_error(&run(&["run", path.to_str().unwrap(), "hi"]), 1, "not a GGUF file");
}

#[test]
fn a_truncated_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = std::fs::read(common::smollm2_path()).unwrap();
    std::fs::write(&path, &bytes[..3 << 20]).unwrap();
    assert_clean_error(&run(&["run", path.to_str().unwrap(), "hi"]), 1, "truncated");
}

#[test]
fn a_prompt_longer_than_the_context_names_both_numbers() {
    let long = "word ".repeat(100).trim_end().to_string();
    let o = run(&["run", "smollm2-135m", "--raw", &long, "--ctx-size", "32"]);
    assert_clean_error(&o, 1, "prompt is 100 tokens but the context holds 32");
}

#[test]
fn invalid_utf8_on_stdin_is_a_clear_error() {
    let o = run_with_stdin(&["run", "smollm2-135m"], b"caf\xe9 au lait\n");
    assert_clean_error(&o, 1, "stdin is not valid UTF-8 (invalid byte at offset 3)");
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let o = run(&["run", "smollm2-135m", "hi", "--temperature=-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--temperature must be 0 or more"));
}

#[test]
fn version_names_the_commit_and_backends() {
    let o = Command::new(env!("CARGO_BIN_EXE_bodega")).arg("--version").output().unwrap();
    let out = stdout(&o);
    assert!(out.starts_with("bodega ") && out.contains("commit ") && out.contains("backends: cpu"), "{out}");
}
