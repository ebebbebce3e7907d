//! `bodega bench`'s machinery, apart from presentation: scenarios and plans, prompts, targets (the
//! in-process engine or an OpenAI-compatible URL), load generation, metrics with vLLM's definitions,
//! engine-side measurements and the report. `cli/bench.rs` turns a report into tables and files.

pub mod apple_chips;
pub mod config;
pub mod driver;
pub mod http;
pub mod load;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod resources;
pub mod target;
pub mod workload;
