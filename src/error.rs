//! The library's error type: every failure a user can cause or meet, each with a message that names
//! the offending thing, so that the CLI can print one line and the server can map it to a status code.

use std::path::PathBuf;

/// Everything that can go wrong below the command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model reference that is neither a file nor a known alias.
    #[error("no model named '{name}'")]
    ModelNotFound {
        /// What the user typed.
        name: String,
        /// Names that would have worked (aliases, close matches).
        available: Vec<String>,
    },
    /// An alias whose file the fetch script has not installed yet.
    #[error("model '{alias}' is not installed (expected {})", path.display())]
    ModelNotInstalled {
        /// The alias.
        alias: String,
        /// Where the fetch script puts it.
        path: PathBuf,
    },
    /// The file is not a GGUF file or is damaged.
    #[error("{}: {reason}", path.display())]
    BadGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model whose architecture (GGUF `general.architecture`, `config.json` `model_type`) bodega has no
    /// implementation for.
    #[error("unsupported architecture '{0}' (supported: {supported})", supported = crate::model::config::SUPPORTED_ARCHITECTURES)]
    UnsupportedArchitecture(String),
    /// A tensor stored in a type bodega cannot multiply with.
    #[error("unsupported weight type {0} (bodega reads Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K, F16, BF16, F32)")]
    UnsupportedWeightType(String),
    /// A quantization scheme bodega has no kernels or conversion for (MLX 3-bit, `mxfp4`, ...).
    #[error("unsupported quantization: {0}")]
    UnsupportedQuantization(String),
    /// The GGUF metadata lacks a key or has one of the wrong type.
    #[error("model metadata: {0}")]
    Metadata(String),
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be rendered.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A prompt that cannot fit in the context window.
    #[error("prompt is {prompt_tokens} tokens but the context holds {context} (see --ctx-size)")]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens the context holds.
        context: usize,
    },
    /// An invalid request or setting (a value out of range, a device not compiled in).
    #[error("{0}")]
    InvalidRequest(String),
    /// A benchmark that cannot run as asked: a bad scenario, flag or dataset, or an unreachable target.
    #[error("{0}")]
    Bench(String),
    /// A memory plan that does not fit the device (unified memory on a Mac): what is needed and what is
    /// available, and the flag or choice that changes it.
    #[error("{message}")]
    MemoryBudget {
        /// What does not fit, with the numbers.
        message: String,
        /// The next step.
        hint: String,
    },
    /// The engine thread is gone (it panicked or was shut down).
    #[error("the engine has stopped")]
    EngineStopped,
    /// Finding, pulling, listing or removing a model of the Hugging Face Hub failed.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// A path that is neither a GGUF file nor a model folder bodega can read.
    #[error(
        "{path} is not a model bodega reads (supported: a .gguf file, or a folder with config.json and \
         .safetensors weights, plain f32/f16/bf16 or MLX-quantized 4/8-bit)",
        path = .0.display()
    )]
    UnsupportedFormat(PathBuf),
    /// A speculative draft model that cannot propose for the target (another tokenizer).
    #[error("the draft model {model} cannot propose for the target: {reason}")]
    DraftMismatch {
        /// The draft model's file.
        model: String,
        /// What differs.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Shorthand used across the library.
pub type Result<T> = std::result::Result<T, Error>;
