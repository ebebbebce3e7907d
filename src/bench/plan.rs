//! The benchmark a set of [`Settings`] asks for, checked and with every default filled in: table rows
//! (a sweep over concurrency or request rate, or one row per class of a mix), or single-stream depths.

use super::config::{ClassSettings, Settings};
use super::metrics::Slo;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

/// Prompt tokens of a random prompt when nothing says otherwise.
pub const DEFAULT_INPUT_LEN: usize = 128;
/// Generated tokens per request when nothing says otherwise.
pub const DEFAULT_OUTPUT_LEN: usize = 128;
/// Warm-up requests when nothing says otherwise.
pub const DEFAULT_WARMUP: usize = 2;

/// What a class of requests sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadSpec {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub prefix_len: usize,
    pub dataset: Option<PathBuf>,
    /// Sampling temperature of the requests: 0 is greedy; above, the engine's sampler with
    /// llama.cpp's top-k 40 and top-p 0.95 (sent to servers too).
    pub temperature: f32,
}

/// How requests are offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// A fixed number of requests in flight: each one that finishes starts the next.
    Closed { concurrency: usize },
    /// Requests arrive at `rate` per second (gamma-distributed gaps with shape `burstiness`),
    /// at most `max_concurrency` in flight when set.
    Open { rate: f64, burstiness: f64, max_concurrency: Option<usize> },
}

/// One class of requests in a row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassPlan {
    pub name: String,
    pub workload: WorkloadSpec,
    pub load: Load,
    pub num_prompts: usize,
}

/// One table row: classes that run together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowPlan {
    /// `c=4`, `rate=2`, or the mix's name.
    pub label: String,
    pub classes: Vec<ClassPlan>,
}

/// What the benchmark measures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// Throughput and latency under load, a row per sweep value.
    Load { rows: Vec<RowPlan> },
    /// llama-bench's pp/tg: one stream, prompt then decode speed with `depth` tokens already cached.
    SingleStream { depths: Vec<usize>, workload: WorkloadSpec },
}

/// A checked benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub description: Option<String>,
    #[serde(flatten)]
    pub mode: Mode,
    pub warmup: usize,
    pub repeat: usize,
    pub seed: u64,
    pub slo: Slo,
}

fn bad(message: impl Into<String>) -> Error {
    Error::Bench(message.into())
}

impl Plan {
    /// Checks the settings and fills in defaults.
    pub fn resolve(s: Settings) -> Result<Self> {
        let concurrency: Option<Vec<usize>> = s.concurrency.clone().map(Into::into);
        let rates: Option<Vec<f64>> = s.request_rate.clone().map(Into::into);
        let depths: Option<Vec<usize>> = s.depth.clone().map(Into::into);
        let burstiness = s.burstiness.unwrap_or(1.0);
        if !(burstiness.is_finite() && burstiness > 0.0) {
            return Err(bad("--burstiness must be more than 0 (1 is a Poisson process)"));
        }
        if concurrency.iter().flatten().any(|&c| c == 0) {
            return Err(bad("--concurrency must be at least 1"));
        }
        if rates.iter().flatten().any(|&r| !(r.is_finite() && r > 0.0)) {
            return Err(bad("--request-rate must be a positive number of requests per second"));
        }
        let mode = if let Some(depths) = depths {
            if concurrency.is_some() || rates.is_some() || !s.class.is_empty() {
                return Err(bad("--depth measures one stream: leave out --concurrency, --request-rate and classes"));
            }
            let workload = workload(&s.workload())?;
            if workload.dataset.is_some() || workload.prefix_len > 0 {
                return Err(bad("--depth uses random prompts: leave out --dataset and --prefix-len"));
            }
            Mode::SingleStream { depths, workload }
        } else if !s.class.is_empty() {
            if concurrency.is_some() || rates.is_some() {
                return Err(bad("a scenario with classes sets the load per class, not at the top level"));
            }
            let classes = s
                .class
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    class_in_mix(i, &ClassSettings { name: None, ..s.workload() }.overridden_by(c.clone()), burstiness)
                })
                .collect::<Result<Vec<_>>>()?;
            let label = s.name.clone().unwrap_or_else(|| "mix".into());
            Mode::Load { rows: vec![RowPlan { label, classes }] }
        } else {
            let workload = workload(&s.workload())?;
            let rows = match (concurrency, rates) {
                (Some(cs), Some(rs)) if cs.len() > 1 && rs.len() > 1 => {
                    return Err(bad("sweep either --concurrency or --request-rate, not both"))
                }
                (cap, Some(rs)) => {
                    let max_concurrency = cap.map(|c| c[0]);
                    rs.iter()
                        .map(|&rate| {
                            let n = s.num_prompts.unwrap_or(10 * (rate.ceil() as usize).max(1));
                            let load = Load::Open { rate, burstiness, max_concurrency };
                            row(format!("rate={rate}"), &workload, load, n)
                        })
                        .collect()
                }
                (cs, None) => cs
                    .unwrap_or_else(|| vec![1])
                    .into_iter()
                    .map(|c| {
                        row(
                            format!("c={c}"),
                            &workload,
                            Load::Closed { concurrency: c },
                            s.num_prompts.unwrap_or(10 * c),
                        )
                    })
                    .collect(),
            };
            Mode::Load { rows }
        };
        if s.num_prompts == Some(0) {
            return Err(bad("--num-prompts must be at least 1"));
        }
        let repeat = s.repeat.unwrap_or(1);
        if repeat == 0 {
            return Err(bad("--repeat must be at least 1"));
        }
        Ok(Plan {
            description: s.description,
            mode,
            warmup: s.warmup.unwrap_or(DEFAULT_WARMUP),
            repeat,
            seed: s.seed.unwrap_or(0),
            slo: s.slo.as_deref().map(parse_slo).transpose()?.unwrap_or_default(),
        })
    }
}

fn row(label: String, workload: &WorkloadSpec, load: Load, num_prompts: usize) -> RowPlan {
    let class = ClassPlan { name: "all".into(), workload: workload.clone(), load, num_prompts };
    RowPlan { label, classes: vec![class] }
}

fn class_in_mix(index: usize, c: &ClassSettings, burstiness: f64) -> Result<ClassPlan> {
    let name = c.name.clone().unwrap_or_else(|| format!("class {}", index + 1));
    let load = match (c.concurrency, c.request_rate) {
        (Some(0), _) => return Err(bad(format!("class '{name}': concurrency must be at least 1"))),
        (Some(concurrency), None) => Load::Closed { concurrency },
        (cap, Some(rate)) if rate.is_finite() && rate > 0.0 => Load::Open { rate, burstiness, max_concurrency: cap },
        (_, Some(_)) => return Err(bad(format!("class '{name}': request-rate must be positive"))),
        (None, None) => return Err(bad(format!("class '{name}' needs concurrency or request-rate"))),
    };
    let num_prompts = match (c.num_prompts, load) {
        (Some(0), _) => return Err(bad(format!("class '{name}': num-prompts must be at least 1"))),
        (Some(n), _) => n,
        (None, Load::Closed { concurrency }) => 10 * concurrency,
        (None, Load::Open { rate, .. }) => 10 * (rate.ceil() as usize).max(1),
    };
    Ok(ClassPlan { name, workload: workload(c)?, load, num_prompts })
}

fn workload(c: &ClassSettings) -> Result<WorkloadSpec> {
    let range_ratio = c.range_ratio.unwrap_or(0.0);
    if !(0.0..1.0).contains(&range_ratio) {
        return Err(bad("--range-ratio must be at least 0 and below 1"));
    }
    if c.dataset.is_some() && (c.input_len.is_some() || c.prefix_len.is_some()) {
        return Err(bad("--dataset brings its own prompts: leave out --input-len and --prefix-len"));
    }
    let temperature = c.temperature.unwrap_or(0.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(bad(format!("--temperature must be 0 (greedy) or more, not {temperature}")));
    }
    let spec = WorkloadSpec {
        input_len: c.input_len.unwrap_or(DEFAULT_INPUT_LEN),
        output_len: c.output_len.unwrap_or(DEFAULT_OUTPUT_LEN),
        range_ratio,
        prefix_len: c.prefix_len.unwrap_or(0),
        dataset: c.dataset.clone(),
        temperature,
    };
    if spec.input_len == 0 || spec.output_len == 0 {
        return Err(bad("--input-len and --output-len must be at least 1"));
    }
    Ok(spec)
}

/// Parses `ttft=500ms,tpot=50,e2el=2s` (milliseconds unless a unit says otherwise).
pub fn parse_slo(text: &str) -> Result<Slo> {
    let mut slo = Slo::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("--slo '{part}': write KEY=VALUE, e.g. ttft=500ms,tpot=50ms")))?;
        let ms = parse_millis(value.trim())
            .ok_or_else(|| bad(format!("--slo {key}: '{value}' is not a duration (examples: 500ms, 2s, 50)")))?;
        match key.trim() {
            "ttft" => slo.ttft_ms = Some(ms),
            "tpot" => slo.tpot_ms = Some(ms),
            "e2el" => slo.e2el_ms = Some(ms),
            other => return Err(bad(format!("--slo: unknown objective '{other}' (use ttft, tpot or e2el)"))),
        }
    }
    Ok(slo)
}

fn parse_millis(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1e3)
    } else {
        (value, 1.0)
    };
    number.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0).map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::config::OneOrMany;

    #[test]
    fn slo_parses_units() {
        let slo = parse_slo("ttft=0.5s, tpot=50ms,e2el=2000").unwrap();
        assert_eq!((slo.ttft_ms, slo.tpot_ms, slo.e2el_ms), (Some(500.0), Some(50.0), Some(2000.0)));
        assert!(parse_slo("ttfb=1").unwrap_err().to_string().contains("unknown objective 'ttfb'"));
        assert!(parse_slo("ttft").is_err());
        assert!(parse_slo("ttft=-3ms").is_err());
    }

    #[test]
    fn a_concurrency_list_sweeps_with_ten_prompts_each() {
        let s = Settings { concurrency: Some(OneOrMany::Many(vec![1, 4])), ..Default::default() };
        let Mode::Load { rows } = Plan::resolve(s).unwrap().mode else { panic!("load mode") };
        let labels: Vec<_> = rows.iter().map(|r| (r.label.as_str(), r.classes[0].num_prompts)).collect();
        assert_eq!(labels, [("c=1", 10), ("c=4", 40)]);
        assert_eq!(rows[1].classes[0].workload.input_len, DEFAULT_INPUT_LEN);
    }

    #[test]
    fn contradictions_are_errors() {
        let both = Settings {
            concurrency: Some(OneOrMany::Many(vec![1, 2])),
            request_rate: Some(OneOrMany::Many(vec![1.0, 2.0])),
            ..Default::default()
        };
        assert!(Plan::resolve(both).unwrap_err().to_string().contains("not both"));
        let depth =
            Settings { depth: Some(OneOrMany::One(0)), concurrency: Some(OneOrMany::One(2)), ..Default::default() };
        assert!(Plan::resolve(depth).is_err());
        let zero = Settings { concurrency: Some(OneOrMany::One(0)), ..Default::default() };
        assert!(Plan::resolve(zero).is_err());
        let ratio = Settings { range_ratio: Some(1.5), ..Default::default() };
        assert!(Plan::resolve(ratio).is_err());
        for temperature in [-0.5, f32::NAN, f32::INFINITY] {
            let bad = Settings { temperature: Some(temperature), ..Default::default() };
            assert!(Plan::resolve(bad).unwrap_err().to_string().contains("--temperature must be 0"), "{temperature}");
        }
    }

    #[test]
    fn mixes_take_defaults_from_the_top_level() {
        let s: Settings = toml::from_str(
            "output-len = 64\ntemperature = 0.7\n[[class]]\nname = \"chat\"\nconcurrency = 2\n\
             [[class]]\ninput-len = 900\nrequest-rate = 0.5\ntemperature = 0\n",
        )
        .unwrap();
        let Mode::Load { rows } = Plan::resolve(s).unwrap().mode else { panic!("load mode") };
        let c = &rows[0].classes;
        assert_eq!((c[0].name.as_str(), c[0].workload.output_len, c[0].num_prompts), ("chat", 64, 20));
        assert_eq!((c[1].name.as_str(), c[1].workload.input_len, c[1].num_prompts), ("class 2", 900, 10));
        assert_eq!((c[0].workload.temperature, c[1].workload.temperature), (0.7, 0.0), "a class may sample or not");
        assert!(matches!(c[1].load, Load::Open { rate, .. } if rate == 0.5));
    }

    #[test]
    fn unknown_scenario_keys_are_rejected() {
        let err = toml::from_str::<Settings>("concurency = 4\n").unwrap_err();
        assert!(err.message().contains("concurency"), "{}", err.message());
    }
}
