//! bodega's CPU kernels read GGUF blocks as candle writes them: for every format, candle quantizes
//! random rows, and our dequantization must equal candle's (an independent reading of each layout),
//! and our matmul must agree with candle's `QMatMul` on the same weights.

use bodega::ops::QWeights;
use bodega_cpu_kernels::{QuantFormat, QuantMatrix};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::sync::Arc;

const FORMATS: [(QuantFormat, GgmlDType); 7] = [
    (QuantFormat::Q4_0, GgmlDType::Q4_0),
    (QuantFormat::Q4_1, GgmlDType::Q4_1),
    (QuantFormat::Q5_0, GgmlDType::Q5_0),
    (QuantFormat::Q8_0, GgmlDType::Q8_0),
    (QuantFormat::Q4K, GgmlDType::Q4K),
    (QuantFormat::Q5K, GgmlDType::Q5K),
    (QuantFormat::Q6K, GgmlDType::Q6K),
];

/// Deterministic values in [-1, 1) with a few larger ones.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0;
            if i % 41 == 7 {
                v * 6.0
            } else {
                v
            }
        })
        .collect()
}

fn quantized(dtype: GgmlDType, rows: usize, cols: usize) -> QTensor {
    let t = Tensor::from_vec(values(rows * cols, rows), (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

#[test]
fn dequantized_rows_equal_candles() {
    for (format, dtype) in FORMATS {
        let (rows, cols) = (5, 512);
        let q = quantized(dtype, rows, cols);
        let theirs = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let ours = QuantMatrix::new(format, rows, cols, q.data().unwrap().into_owned()).unwrap();
        let mut row = vec![0.0; cols];
        for (r, want) in theirs.iter().enumerate() {
            ours.dequantize_row(r, &mut row).unwrap();
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (c, (&got, &want)) in row.iter().zip(want).enumerate() {
                assert!((got - want).abs() <= 1e-6 * scale, "{format} row {r} col {c}: {got} vs candle {want}");
            }
        }
    }
}

#[test]
fn matmul_agrees_with_candles() {
    for (format, dtype) in FORMATS {
        let (n, k, m) = (33, 768, 5);
        let ours = QWeights::new(Arc::new(quantized(dtype, n, k))).unwrap();
        assert!(matches!(ours, QWeights::Cpu(_)), "{format} runs on bodega's kernels");
        let theirs = QMatMul::from_qtensor(quantized(dtype, n, k)).unwrap();
        let x = Tensor::from_vec(values(m * k, 3), (m, k), &Device::Cpu).unwrap();
        let got = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let want = theirs.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let scale = want.iter().flatten().fold(0.0f32, |a, v| a.max(v.abs()));
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            // Both quantize activations to 8 bits, in slightly different ways.
            assert!((g - w).abs() <= 0.02 * scale, "{format}: {g} vs candle {w} (scale {scale})");
        }
    }
}

#[test]
fn embedding_rows_equal_the_dequantized_matrix() {
    let q = quantized(GgmlDType::Q8_0, 10, 64);
    let want = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let ours = QWeights::new(Arc::new(q)).unwrap();
    let ids = Tensor::new(&[3u32, 0, 9, 3], &Device::Cpu).unwrap();
    let got = ours.embedding(&ids).unwrap().to_vec2::<f32>().unwrap();
    for (row, id) in got.iter().zip([3, 0, 9, 3]) {
        assert_eq!(row, &want[id]);
    }
}
