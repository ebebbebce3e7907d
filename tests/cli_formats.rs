//! `bodega run` on model folders through the real binary: safetensors and MLX folders run, a
//! dequantized model says so in one line, `--think/--no-think` reach the chat template, and models
//! bodega cannot read fail with one error line that names what it supports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(path)
}

fn run(model: &Path, extra: &[&str]) -> Output {
    let base = ["run", "--no-pull", "--kv-memory", "8M", "--temperature", "0", "--max-tokens", "3", "--json"];
    Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args(base)
        .arg(model)
        .args(extra)
        .env_remove("BODEGA_LOG")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reply(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.lines().all(|l| l.starts_with("error: ") || l.starts_with("hint: ")), "stderr: {err}");
}

#[test]
fn a_safetensors_folder_and_its_gguf_give_the_same_greedy_reply() {
    let folder = reply(&run(&tiny("qwen2/hf"), &["--raw", "The quick brown fox"]));
    let gguf = reply(&run(&tiny("qwen2/model.gguf"), &["--raw", "The quick brown fox"]));
    assert_eq!(folder["prompt_ids"], gguf["prompt_ids"]);
    assert_eq!(folder["generated_ids"], gguf["generated_ids"]);
    assert_eq!(folder["generated_ids"].as_array().unwrap().len(), 3);
}

#[test]
fn an_mlx_8bit_folder_runs_dequantized_with_one_notice_line() {
    let out = run(&tiny("llama/mlx-8bit-g64"), &["--raw", "def add(a, b):"]);
    reply(&out);
    let notices: Vec<_> = stderr(&out).lines().filter(|l| l.starts_with("notice:")).map(str::to_string).collect();
    assert_eq!(notices.len(), 1, "stderr: {}", stderr(&out));
    assert!(notices[0].contains("dequantized to f32"), "{}", notices[0]);
    let repacked = run(&tiny("llama/mlx-4bit-g64"), &["--raw", "def add(a, b):"]);
    reply(&repacked);
    assert!(!stderr(&repacked).contains("notice:"), "a repacked model printed: {}", stderr(&repacked));
}

#[test]
fn no_think_reaches_the_chat_template() {
    let model = tiny("qwen3/hf");
    let default = reply(&run(&model, &["Hi"]));
    let no_think = reply(&run(&model, &["Hi", "--no-think"]));
    let think = reply(&run(&model, &["Hi", "--think"]));
    let ids = |v: &serde_json::Value| v["prompt_ids"].as_array().unwrap().len();
    assert_eq!(ids(&default), ids(&think), "--think is the template's default here");
    assert!(ids(&no_think) > ids(&default), "--no-think did not add the empty thinking block");
}

#[test]
fn unsupported_models_are_one_error_line_naming_what_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    let phi = dir.path().join("phi");
    std::fs::create_dir(&phi).unwrap();
    std::fs::write(phi.join("config.json"), r#"{"model_type": "phi3", "hidden_size": 64}"#).unwrap();
    std::fs::write(phi.join("model.safetensors"), b"").unwrap();
    assert_clean_error(&run(&phi, &["Hi"]), "unsupported architecture 'phi3' (supported: llama, mistral");

    let bin = dir.path().join("torch");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("config.json"), std::fs::read(tiny("llama/hf/config.json")).unwrap()).unwrap();
    std::fs::write(bin.join("pytorch_model.bin"), b"not safetensors").unwrap();
    assert_clean_error(&run(&bin, &["Hi"]), "not a model bodega reads (supported: a .gguf file, or a folder");

    let mlx3 = dir.path().join("mlx3");
    std::fs::create_dir(&mlx3).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny("llama/mlx-4bit-g64/config.json")).unwrap()).unwrap();
    config["quantization"] = serde_json::json!({"bits": 3, "group_size": 64});
    std::fs::write(mlx3.join("config.json"), config.to_string()).unwrap();
    assert_clean_error(&run(&mlx3, &["Hi"]), "MLX 3-bit with groups of 64 (bodega reads MLX affine 4-bit and 8-bit)");
}

/// A copy of the tiny Llama folder whose `generation_config.json` is `generation`.
fn folder_with_generation_config(generation: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny("llama/hf")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("generation_config.json"), generation).unwrap();
    dir
}

/// `bodega run` on `model` without the sampling flags of [`run`], so the model's defaults apply.
fn run_sampled(model: &Path, extra: &[&str]) -> Vec<u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args(["run", "--no-pull", "--kv-memory", "8M", "--max-tokens", "12", "--json", "--raw"])
        .arg(model)
        .args(extra)
        .arg("The quick brown fox")
        .env_remove("BODEGA_LOG")
        .output()
        .unwrap();
    reply(&out)["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

#[test]
fn generation_config_sampling_applies_unless_a_flag_overrides_it() {
    // top_k 1 makes any temperature greedy: every seed gives the greedy reply, with the file's
    // repetition penalty applied.
    let dir = folder_with_generation_config(r#"{"temperature": 5.0, "top_k": 1, "repetition_penalty": 3.0}"#);
    let model = dir.path();
    let greedy_with_penalty = run_sampled(model, &["--temperature", "0"]);
    for seed in ["1", "2", "3"] {
        assert_eq!(run_sampled(model, &["--seed", seed]), greedy_with_penalty, "seed {seed}: top_k 1 ignored");
    }
    assert_ne!(
        run_sampled(model, &["--temperature", "0", "--repeat-penalty", "1"]),
        greedy_with_penalty,
        "the file's repetition penalty was not applied"
    );
    // --top-k 0 overrides the file: temperature 5 now samples, and seeds differ.
    let replies: Vec<Vec<u64>> =
        ["1", "2", "3"].iter().map(|s| run_sampled(model, &["--top-k", "0", "--seed", s])).collect();
    assert!(replies.iter().any(|r| r != &replies[0]), "--top-k 0 did not override the file: {replies:?}");
    // do_sample false is greedy whatever the temperature; --temperature overrides it.
    let dir = folder_with_generation_config(r#"{"do_sample": false, "temperature": 5.0, "top_k": 0}"#);
    let greedy = run_sampled(dir.path(), &["--temperature", "0"]);
    assert_eq!(run_sampled(dir.path(), &["--seed", "4"]), greedy);
    let hot: Vec<Vec<u64>> =
        ["1", "2", "3"].iter().map(|s| run_sampled(dir.path(), &["--temperature", "5", "--seed", s])).collect();
    assert!(hot.iter().any(|r| r != &hot[0]), "--temperature did not override do_sample false: {hot:?}");
}

#[test]
fn a_bad_generation_config_is_one_error_line() {
    let dir = folder_with_generation_config(r#"{"top_p": 7}"#);
    let out = run(dir.path(), &["--raw", "Hi"]);
    assert_clean_error(&out, "`top_p` must be");
}
