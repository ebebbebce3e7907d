//! Turning files on disk into a model: GGUF files, and synthetic models of a named shape.

pub mod gguf;
pub mod synthetic;
