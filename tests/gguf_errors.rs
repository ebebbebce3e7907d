//! The GGUF reader's error paths, on small crafted files: every damaged or unsupported file gives a
//! clear error that names the problem, never a panic.

mod common;

use bodega::model::load::gguf::GgufFile;
use bodega::Error;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::io::Write;
use std::path::PathBuf;

fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    (dir, path)
}

/// A well-formed GGUF with the given architecture and one small F32 tensor.
fn tiny_gguf(architecture: &str) -> Vec<u8> {
    let tensor =
        QTensor::quantize(&Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let arch = Value::String(architecture.to_string());
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &[("general.architecture", &arch)], &[("token_embd.weight", &tensor)]).unwrap();
    out.into_inner()
}

/// A GGUF v3 header by hand: one metadata string and one tensor of the given ggml type code.
fn header_with_tensor_type(type_code: u32) -> Vec<u8> {
    let mut b = Vec::new();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // string
    string(&mut b, "llama");
    string(&mut b, "token_embd.weight");
    b.extend(1u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(type_code.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + 1024, 0);
    b
}

fn open_err(name: &str, bytes: &[u8]) -> Error {
    let (_dir, path) = temp_file(name, bytes);
    match GgufFile::open(&path) {
        Ok(_) => panic!("{name} opened without error"),
        Err(e) => e,
    }
}

#[test]
fn a_file_without_the_magic_is_not_a_gguf() {
    let e = open_err("notes.gguf", b"this is a text file, not a model\n");
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
}

#[test]
fn an_empty_file_is_not_a_gguf() {
    let e = open_err("empty.gguf", b"");
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
}

#[test]
fn a_header_cut_short_is_reported_as_truncated() {
    let full = tiny_gguf("llama");
    let e = open_err("cut.gguf", &full[..40]);
    assert!(matches!(e, Error::BadGguf { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn tensor_data_past_the_end_is_reported_as_truncated() {
    let full = tiny_gguf("llama");
    let e = open_err("short.gguf", &full[..full.len() - 16]);
    assert!(e.to_string().contains("truncated: tensor 'token_embd.weight'"), "{e}");
}

#[test]
fn the_real_model_cut_in_half_is_truncated() {
    let bytes = std::fs::read(common::smollm2_path()).unwrap();
    let e = open_err("half.gguf", &bytes[..bytes.len() / 2]);
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn an_unknown_weight_type_is_named() {
    let e = open_err("iq4.gguf", &header_with_tensor_type(23));
    assert!(matches!(e, Error::UnsupportedWeightType(_)), "{e:?}");
    assert!(e.to_string().contains("IQ4_XS"), "{e}");
}

#[test]
fn an_unknown_architecture_is_named() {
    let (_dir, path) = temp_file("mamba.gguf", &tiny_gguf("mamba"));
    let mut file = GgufFile::open(&path).unwrap();
    match bodega::model::from_gguf(&mut file, &Device::Cpu) {
        Err(Error::UnsupportedArchitecture(arch)) => assert_eq!(arch, "mamba"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a mamba file loaded"),
    }
}

#[test]
fn missing_hyperparameters_are_named() {
    let (_dir, path) = temp_file("bare.gguf", &tiny_gguf("llama"));
    let mut file = GgufFile::open(&path).unwrap();
    let e = bodega::model::from_gguf(&mut file, &Device::Cpu).err().expect("a bare file loaded");
    assert!(e.to_string().contains("llama.embedding_length"), "{e}");
}
