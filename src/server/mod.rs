//! `serve-lite`: an OpenAI-compatible HTTP server on the shared engine (axum on tokio). Handlers
//! translate HTTP into engine requests and engine events into JSON or server-sent events; they talk
//! to the `Engine` only.

mod error;
mod metrics;
mod openai;
mod routes;

pub use error::ApiError;

use crate::engine::Engine;
use crate::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id clients use for the model (`GET /v1/models`).
    pub model_id: String,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// Most requests in the engine at once (running and waiting); more get 429.
    pub max_queue: usize,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Sampling for the fields a request leaves out: the model's `generation_config.json` over
    /// bodega's defaults.
    pub sampling: crate::engine::SamplingParams,
}

/// What every handler shares.
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) config: ServerConfig,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) counters: metrics::Counters,
    pub(crate) next_id: AtomicU64,
}

impl AppState {
    /// State for serving `engine`.
    pub fn new(engine: Engine, tokenizer: Arc<Tokenizer>, config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            engine,
            tokenizer,
            config,
            in_flight: AtomicUsize::new(0),
            counters: metrics::Counters::default(),
            next_id: AtomicU64::new(0),
        })
    }
}

/// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish for up to
/// the configured timeout.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = state.config.shutdown_timeout;
    let app = routes::router(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let _ = stop_rx.await;
    match tokio::time::timeout(timeout, server).await {
        Ok(joined) => joined.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!("in-flight requests still running after {timeout:?}: exiting anyway");
            Ok(())
        }
    }
}
