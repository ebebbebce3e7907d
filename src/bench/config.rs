//! Benchmark settings from a scenario file (`bench-configs/NAME.toml`) and the command line, and the
//! plan they resolve to. A scenario's keys are the command line's flag names, so a file is just saved
//! flags; flags given on the command line win over the file. A scenario can also run several classes
//! of requests at once (`[[class]]` tables), each with its own lengths and load.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A value that may be written once or as a list (`concurrency = 4` or `concurrency = [1, 4, 16]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> From<OneOrMany<T>> for Vec<T> {
    fn from(v: OneOrMany<T>) -> Self {
        match v {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(xs) => xs,
        }
    }
}

/// Everything a run can be told, each optional so that the file and the command line can be merged.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// One line on what the scenario shows (printed above the table).
    pub description: Option<String>,
    /// Label of a mix's row.
    pub name: Option<String>,
    /// Prompt tokens of a random prompt.
    pub input_len: Option<usize>,
    /// Tokens to generate (EOS ignored).
    pub output_len: Option<usize>,
    /// Lengths vary uniformly within ±ratio of the given ones (0: fixed).
    pub range_ratio: Option<f64>,
    /// Tokens of a random prefix shared by every prompt (a long system prompt).
    pub prefix_len: Option<usize>,
    /// A JSONL file of prompts instead of random ones.
    pub dataset: Option<PathBuf>,
    /// Sampling temperature of every request (0: greedy, the default).
    pub temperature: Option<f32>,
    /// Closed loop: requests kept in flight; a list sweeps, one table row each.
    pub concurrency: Option<OneOrMany<usize>>,
    /// Open loop: requests per second; a list sweeps.
    pub request_rate: Option<OneOrMany<f64>>,
    /// Gamma shape of the arrival process (1 = Poisson; lower is burstier).
    pub burstiness: Option<f64>,
    /// Requests per row (default: 10 × concurrency).
    pub num_prompts: Option<usize>,
    /// Requests sent before measuring, not counted.
    pub warmup: Option<usize>,
    /// Runs per row, reported as mean ± std.
    pub repeat: Option<usize>,
    /// Single-stream mode: prompt and decode speed with this many tokens already in the context.
    pub depth: Option<OneOrMany<usize>>,
    /// Seed of the random prompts and arrival times.
    pub seed: Option<u64>,
    /// Goodput objectives, e.g. "ttft=500ms,tpot=50ms".
    pub slo: Option<String>,
    /// Classes of requests that run at the same time (a mix); each takes the top-level workload keys
    /// as defaults.
    #[serde(default)]
    pub class: Vec<ClassSettings>,
}

/// One class of requests: what it sends and, inside a mix, how fast.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClassSettings {
    /// Name shown in the table (mixes only).
    pub name: Option<String>,
    /// Prompt tokens of a random prompt.
    pub input_len: Option<usize>,
    /// Tokens to generate (EOS ignored).
    pub output_len: Option<usize>,
    /// Lengths vary uniformly within ±ratio of the given ones (0: fixed).
    pub range_ratio: Option<f64>,
    /// Tokens of a random prefix shared by every prompt of the class (a long system prompt).
    pub prefix_len: Option<usize>,
    /// A JSONL file of prompts instead of random ones.
    pub dataset: Option<PathBuf>,
    /// Sampling temperature of the class's requests (0: greedy).
    pub temperature: Option<f32>,
    /// Mix only: requests kept in flight for this class.
    pub concurrency: Option<usize>,
    /// Mix only: requests per second for this class.
    pub request_rate: Option<f64>,
    /// Mix only: requests of this class.
    pub num_prompts: Option<usize>,
}

impl Settings {
    /// Reads a scenario file, with errors that name the file and the problem.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Bench(format!("cannot read scenario {}: {e}", path.display())))?;
        let mut settings: Settings =
            toml::from_str(&text).map_err(|e| Error::Bench(format!("scenario {}: {}", path.display(), e.message())))?;
        // Dataset paths in a scenario are relative to the scenario file.
        let base = path.parent().unwrap_or(Path::new("."));
        let datasets = std::iter::once(&mut settings.dataset).chain(settings.class.iter_mut().map(|c| &mut c.dataset));
        for d in datasets.flatten().filter(|d| d.is_relative()) {
            *d = base.join(&*d);
        }
        Ok(settings)
    }

    /// These settings with every value `over` sets replacing ours.
    pub fn overridden_by(self, over: Settings) -> Settings {
        Settings {
            description: over.description.or(self.description),
            name: over.name.or(self.name),
            input_len: over.input_len.or(self.input_len),
            output_len: over.output_len.or(self.output_len),
            range_ratio: over.range_ratio.or(self.range_ratio),
            prefix_len: over.prefix_len.or(self.prefix_len),
            dataset: over.dataset.or(self.dataset),
            temperature: over.temperature.or(self.temperature),
            concurrency: over.concurrency.or(self.concurrency),
            request_rate: over.request_rate.or(self.request_rate),
            burstiness: over.burstiness.or(self.burstiness),
            num_prompts: over.num_prompts.or(self.num_prompts),
            warmup: over.warmup.or(self.warmup),
            repeat: over.repeat.or(self.repeat),
            depth: over.depth.or(self.depth),
            seed: over.seed.or(self.seed),
            slo: over.slo.or(self.slo),
            class: if over.class.is_empty() { self.class } else { over.class },
        }
    }
}

impl Settings {
    /// The top-level workload keys as a class (what a single-class run sends, and a mix's defaults).
    pub fn workload(&self) -> ClassSettings {
        ClassSettings {
            name: self.name.clone(),
            input_len: self.input_len,
            output_len: self.output_len,
            range_ratio: self.range_ratio,
            prefix_len: self.prefix_len,
            dataset: self.dataset.clone(),
            temperature: self.temperature,
            ..ClassSettings::default()
        }
    }
}

impl ClassSettings {
    /// These keys with every value `over` sets replacing ours.
    pub fn overridden_by(self, over: ClassSettings) -> ClassSettings {
        ClassSettings {
            name: over.name.or(self.name),
            input_len: over.input_len.or(self.input_len),
            output_len: over.output_len.or(self.output_len),
            range_ratio: over.range_ratio.or(self.range_ratio),
            prefix_len: over.prefix_len.or(self.prefix_len),
            dataset: over.dataset.or(self.dataset),
            temperature: over.temperature.or(self.temperature),
            concurrency: over.concurrency.or(self.concurrency),
            request_rate: over.request_rate.or(self.request_rate),
            num_prompts: over.num_prompts.or(self.num_prompts),
        }
    }
}
