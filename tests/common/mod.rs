//! Shared by the integration tests: the demo model, loaded once per test binary, and the fixture.

#![allow(dead_code)]

use bodega::model::load::gguf::GgufFile;
use bodega::model::Model;
use bodega::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The SmolLM2 demo model's file; fails with the way to get it when it is missing.
pub fn smollm2_path() -> PathBuf {
    match bodega::hub::resolve("smollm2-135m") {
        Ok(path) => path,
        Err(e) => {
            panic!("{e}\nThe tests need the demo models: run scripts/fetch-test-models.sh first.")
        }
    }
}

/// The demo model and its tokenizer, loaded once per test binary.
pub struct Demo {
    pub model: Mutex<Box<dyn Model>>,
    pub tokenizer: Tokenizer,
}

pub fn smollm2() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let mut file = GgufFile::open(&smollm2_path()).expect("open the demo model");
        let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
        let model = bodega::model::from_gguf(&mut file, &candle_core::Device::Cpu).expect("model");
        Demo { model: Mutex::new(model), tokenizer }
    })
}

/// The transformers reference fixture.
pub fn reference() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference-smollm2.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("parse fixture")
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The fixture case with this name.
pub fn reference_case(name: &str) -> serde_json::Value {
    let all = reference();
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no case {name}"))
}
