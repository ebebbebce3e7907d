//! bodega: run and benchmark LLMs locally. One engine (continuous batching over a paged KV cache)
//! serves every front end; this library holds it, the models and ops beneath it, and the CLI above.

pub mod bench;
pub mod cli;
pub mod device;
pub mod engine;
pub mod error;
pub mod hub;
pub mod model;
pub mod ops;
pub mod runner;
pub mod server;
pub mod tokenizer;
pub mod unified_memory;

pub use error::{Error, Result};
