//! Peak memory bandwidth of Apple Silicon chips as Apple publishes it (the chips' tech specs), so that
//! `bodega bench` on a Mac reports a decode step's share of the GPU's roofline without a probe: the
//! CPU bandwidth probe cannot reach what the GPU can.

/// (Metal's device name, GB/s). Where a chip ships with two memory widths under one name (M3 Max:
/// 300 or 400 GB/s; M4 Max: 410 or 546 GB/s) the table holds the wider, so that a share is never
/// overstated; `--peak-bandwidth` gives the exact figure.
const CHIPS: [(&str, f64); 16] = [
    ("Apple M1", 68.25),
    ("Apple M1 Pro", 200.0),
    ("Apple M1 Max", 400.0),
    ("Apple M1 Ultra", 800.0),
    ("Apple M2", 100.0),
    ("Apple M2 Pro", 200.0),
    ("Apple M2 Max", 400.0),
    ("Apple M2 Ultra", 800.0),
    ("Apple M3", 100.0),
    ("Apple M3 Pro", 150.0),
    ("Apple M3 Max", 400.0),
    ("Apple M3 Ultra", 819.0),
    ("Apple M4", 120.0),
    ("Apple M4 Pro", 273.0),
    ("Apple M4 Max", 546.0),
    ("Apple M5", 153.0),
];

/// The published peak bandwidth in GB/s of the GPU Metal calls `name`, when the table knows it.
pub fn peak_bandwidth_gb_s(name: &str) -> Option<f64> {
    CHIPS.iter().find(|(chip, _)| *chip == name.trim()).map(|&(_, gb_s)| gb_s)
}

#[cfg(test)]
mod tests {
    use super::peak_bandwidth_gb_s;

    #[test]
    fn chips_are_found_by_their_exact_metal_name() {
        assert_eq!(peak_bandwidth_gb_s("Apple M2 Pro"), Some(200.0));
        assert_eq!(peak_bandwidth_gb_s("Apple M2"), Some(100.0));
        assert_eq!(peak_bandwidth_gb_s("Apple M4 Max"), Some(546.0));
        assert_eq!(peak_bandwidth_gb_s("Apple M9"), None);
    }
}
