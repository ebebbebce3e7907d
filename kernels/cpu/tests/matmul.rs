//! Every format on every kernel path this machine runs, on the repacked layout (groups of 8 rows, so
//! row counts that are not a multiple of 8 end in a short group): against an f64 matmul of the
//! dequantized weights (within the bound that 8-bit activations allow), and bit-identical whatever
//! the batch and whichever lane of a group a row lands in.

mod support;

use bodega_cpu_kernels::{KernelPath, QuantFormat, QuantMatrix};
use support::{gguf, magnitude, matrix, reference, Rng};

const ROWS: [usize; 4] = [1, 7, 33, 100];
const BATCHES: [usize; 4] = [1, 3, 16, 61];

/// Row lengths per format: one and three super-blocks, and five blocks for the 32-block formats.
fn lengths(format: QuantFormat) -> Vec<usize> {
    match format.block_len() {
        32 => vec![32 * 5, 256 * 3],
        _ => vec![256, 256 * 3],
    }
}

fn run(w: &QuantMatrix, path: KernelPath, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.rows()];
    w.matmul_on(path, x, m, &mut out).unwrap();
    out
}

#[test]
fn lists_the_paths_it_covers() {
    let paths = KernelPath::available();
    eprintln!("kernel paths on this machine: {paths:?}");
    assert_eq!(paths[0], KernelPath::Scalar);
    assert_eq!(KernelPath::best(), *paths.last().unwrap());
}

#[test]
fn dequantize_matches_the_test_quantizers() {
    for format in QuantFormat::ALL {
        for k in lengths(format) {
            let (w, decoded) = matrix(format, 7, k, 1);
            let mut row = vec![0.0; k];
            for r in 0..7 {
                w.dequantize_row(r, &mut row).unwrap();
                for (i, (&got, &want)) in row.iter().zip(&decoded[r * k..][..k]).enumerate() {
                    let tol = 1e-6 * want.abs().max(1e-3);
                    assert!((got - want).abs() <= tol, "{format} k={k} row {r} col {i}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn matches_the_f32_reference_within_the_activation_bound() {
    for path in KernelPath::available() {
        for format in QuantFormat::ALL {
            for k in lengths(format) {
                for (seed, &n) in ROWS.iter().enumerate() {
                    let (w, decoded) = matrix(format, n, k, seed as u64 + 10);
                    for m in BATCHES {
                        let x = Rng::new(seed as u64 * 100 + m as u64).values(m * k);
                        let got = run(&w, path, &x, m);
                        let act_block = if format.block_len() == 32 { 32 } else { 256 };
                        let (want, bound) = reference(&decoded, &x, m, k, act_block);
                        for (i, ((&g, &r), &b)) in got.iter().zip(&want).zip(&bound).enumerate() {
                            let err = (f64::from(g) - r).abs();
                            assert!(
                                err <= b,
                                "{path:?} {format} n={n} k={k} m={m} out[{i}]: {g} vs {r} (err {err:.3e} > {b:.3e})"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Paths differ only in float rounding: each must agree with the scalar reference to 1e-5 of the
/// output's magnitude (`Σ |w x|`), far tighter than the activation bound above.
#[test]
fn every_path_agrees_with_scalar_up_to_rounding() {
    for format in QuantFormat::ALL {
        for k in [256, 640, 768, 2048].into_iter().filter(|k| k % format.block_len() == 0) {
            let (w, decoded) = matrix(format, 37, k, 3);
            let x = Rng::new(5).values(9 * k);
            let want = run(&w, KernelPath::Scalar, &x, 9);
            let magnitude = magnitude(&decoded, &x, 9, k);
            for path in KernelPath::available() {
                let got = run(&w, path, &x, 9);
                for (i, ((&g, &r), &b)) in got.iter().zip(&want).zip(&magnitude).enumerate() {
                    let err = f64::from(g - r).abs();
                    assert!(err <= 1e-5 * b, "{path:?} {format} k={k} out[{i}]: {g} vs scalar {r}");
                }
            }
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_in_any_batch_and_lane() {
    for path in KernelPath::available() {
        for format in QuantFormat::ALL {
            let (k, n) = (256 * 3, 33);
            let (bytes, _) = gguf(format, n, k, 7);
            let w = QuantMatrix::new(format, n, k, bytes.clone()).unwrap();
            let x = Rng::new(99).values(61 * k);
            let all = run(&w, path, &x, 61);
            let first16 = run(&w, path, &x[..16 * k], 16);
            assert_eq!(bits(&first16), bits(&all[..16 * n]), "{path:?} {format}: M=16 vs M=61");
            for r in [0, 1, 5, 15, 16, 33, 59, 60] {
                let alone = run(&w, path, &x[r * k..][..k], 1);
                assert_eq!(bits(&alone), bits(&all[r * n..][..n]), "{path:?} {format}: row {r} alone vs in M=61");
            }
            // The same weight rows `shift` positions later sit in other lanes of other groups (and in
            // other threads' chunks).
            for shift in 1..8 {
                let shifted = shift_rows(format, n, k, &bytes, shift);
                let out = run(&shifted, path, &x, 61);
                for r in 0..61 {
                    let moved = &out[r * (n + shift) + shift..][..n];
                    assert_eq!(bits(moved), bits(&all[r * n..][..n]), "{path:?} {format}: shifted by {shift}");
                }
            }
        }
    }
}

/// The matrix of `bytes` with `shift` extra rows in front (copies of row 0).
fn shift_rows(format: QuantFormat, n: usize, k: usize, bytes: &[u8], shift: usize) -> QuantMatrix {
    let row_bytes = k / format.block_len() * format.block_bytes();
    let mut shifted = bytes[..row_bytes].repeat(shift);
    shifted.extend_from_slice(bytes);
    QuantMatrix::new(format, n + shift, k, shifted).unwrap()
}

/// The repacked copy replaces the GGUF bytes: f32 block parameters cost at most a fifth more, and
/// Q6_K's byte-wide codes 1.56×.
#[test]
fn the_repacked_copy_stays_close_to_the_gguf_size() {
    for format in QuantFormat::ALL {
        let (n, k) = (64, 512);
        let (bytes, _) = gguf(format, n, k, 1);
        let gguf_len = bytes.len() as f64;
        let ratio = QuantMatrix::new(format, n, k, bytes).unwrap().storage_bytes() as f64 / gguf_len;
        let most = if format == QuantFormat::Q6K { 1.57 } else { 1.2 };
        assert!((1.0..=most).contains(&ratio), "{format}: repacked / GGUF = {ratio:.3}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn rejects_bad_shapes_and_paths() {
    assert!(QuantMatrix::new(QuantFormat::Q4K, 2, 32 * 3, vec![0; 2 * 3 * 20]).is_err());
    assert!(QuantMatrix::new(QuantFormat::Q4_1, 2, 64, vec![0; 79]).is_err());
    let (w, _) = matrix(QuantFormat::Q4_1, 3, 64, 1);
    let mut out = vec![0.0; 3];
    assert!(w.matmul_on(KernelPath::Scalar, &[0.0; 63], 1, &mut out).is_err());
    assert!("fastest".parse::<KernelPath>().is_err());
    assert_eq!("AVX2".parse::<KernelPath>(), Ok(KernelPath::Avx2));
    for path in KernelPath::ALL.into_iter().filter(|p| !p.is_supported()) {
        assert!(w.matmul_on(path, &[0.0; 64], 1, &mut out).is_err());
    }
}
