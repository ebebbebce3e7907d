//! `bodega serve-lite`: the engine behind an OpenAI-compatible HTTP API.

use super::load::{load, EngineArgs};
use super::GlobalArgs;
use crate::server::{serve, AppState, ServerConfig};
use anyhow::Context;
use clap::Args;
use std::time::Duration;

pub(super) const EXAMPLES: &str = "\
Examples:
  bodega serve-lite smollm2-135m
  bodega serve-lite smollm2-135m --port 9000 --api-key secret --max-queue 64
  curl -s localhost:8080/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'";

/// Flags of `bodega serve-lite`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model: a .gguf file, a demo alias, or a Hub repository ORG/NAME[:QUANT].
    /// Example: smollm2-135m
    model: String,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server). Example: --host 0.0.0.0
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one). Example: --port 9000
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require 'Authorization: Bearer KEY' on the API routes (not on /health and /metrics).
    /// Example: --api-key secret
    #[arg(long, env = "BODEGA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most requests in the engine at once (running and waiting); more are answered 429.
    /// Example: --max-queue 128
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: u32,
    /// Seconds that in-flight requests may run on after SIGINT/SIGTERM. Example: --shutdown-timeout 5
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let loaded = load(&args.model, &args.engine, global)?;
    let (blocks, block_size) = loaded.engine.kv_blocks();
    let model_id = args.model.clone();
    let config = ServerConfig {
        model_id: model_id.clone(),
        api_key: args.api_key.clone(),
        max_queue: args.max_queue as usize,
        body_limit: 4 << 20,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        sampling: loaded.sampling,
    };
    let state = AppState::new(loaded.engine, loaded.tokenizer, config);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        if !global.quiet {
            eprintln!(
                "bodega serve-lite: http://{addr}/v1 | model {model_id} | device {} | KV cache {blocks} blocks of {block_size} tokens",
                crate::device::describe(global.device)
            );
        }
        serve(state, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: no new requests; waiting for in-flight ones");
}
