//! The HTTP routes: OpenAI's chat completions and completions (JSON or server-sent events), the
//! model list, health and metrics.

use super::error::ApiError;
use super::openai::{token_text, ChatRequest, Common, CompletionRequest};
use super::{metrics, AppState};
use crate::engine::{Completion, Event, FinishReason, RequestHandle, TokenLogprobs};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// All routes over the shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(|State(s): State<Arc<AppState>>| async move { metrics::render(&s) }))
        .fallback(|| async { ApiError { status: StatusCode::NOT_FOUND, ..ApiError::bad_request("no such route") } })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                ..ApiError::bad_request("method not allowed on this route")
            }
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Which API a request came through: it decides the shape of every response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        authorize(&state, &headers)?;
        let req: ChatRequest = parse(body, state.config.body_limit)?;
        check_model(&state, &req.common)?;
        let messages = req.messages()?;
        let (_, ids) =
            state.tokenizer.encode_chat_with(&messages, &req.chat_template_kwargs).map_err(ApiError::from)?;
        respond(state.clone(), Api::Chat, &req.common, ids).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        authorize(&state, &headers)?;
        let req: CompletionRequest = parse(body, state.config.body_limit)?;
        check_model(&state, &req.common)?;
        let ids = state.tokenizer.encode_raw(req.prompt()?).map_err(ApiError::from)?;
        respond(state.clone(), Api::Completion, &req.common, ids).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [{"id": state.config.model_id, "object": "model", "created": 0, "owned_by": "bodega"}]}))
        .into_response()
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.config.api_key else { return Ok(()) };
    let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if sent == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(limit),
        _ => ApiError::bad_request(e.body_text()),
    })?;
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::bad_request(format!("invalid request: {e}")),
        _ => ApiError::bad_request(format!("the body is not valid JSON: {e}")),
    })
}

fn check_model(state: &AppState, common: &Common) -> Result<(), ApiError> {
    match &common.model {
        Some(m) if m != &state.config.model_id => Err(ApiError {
            code: Some("model_not_found"),
            ..ApiError::invalid(
                "model",
                format!("model '{m}' is not served here (this server has '{}')", state.config.model_id),
            )
        }),
        _ => Ok(()),
    }
}

/// Keeps the queue count right whatever way a request ends.
struct Slot(Arc<AppState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Submits the request and answers with JSON or a stream of events.
async fn respond(state: Arc<AppState>, api: Api, common: &Common, ids: Vec<u32>) -> Result<Response, ApiError> {
    let request = common.to_request(ids, api == Api::Chat, &state.config.sampling)?;
    let queued = state.in_flight.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(state.clone());
    if queued >= state.config.max_queue {
        return Err(ApiError::queue_full(state.config.max_queue));
    }
    let handle = state.engine.submit(request).map_err(ApiError::from)?;
    let meta = Meta::new(&state, api);
    if common.stream {
        let include_usage = common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        Ok(stream(state, meta, handle, include_usage, slot).into_response())
    } else {
        let _cancel_if_client_leaves = handle.cancel_on_drop();
        let st = state.clone();
        let (completion, text, logprobs) = tokio::task::spawn_blocking(move || collect(&st, handle))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        drop(slot);
        state.counters.record(&completion.usage);
        Ok(Json(meta.full_response(&text, &completion, logprobs)).into_response())
    }
}

/// Reads a request's events to the end.
fn collect(state: &AppState, handle: RequestHandle) -> Result<(Completion, String, Vec<Value>), ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = handle.recv() {
        match event {
            Event::Token { id, text: piece, logprobs: lp } => {
                text.push_str(&piece);
                logprobs.extend(lp.map(|lp| logprob_entry(state, id, &lp)));
            }
            Event::Done(c) => return Ok((c, text, logprobs)),
            Event::Error(m) => return Err(ApiError::internal(m)),
        }
    }
    Err(ApiError::internal("the engine stopped"))
}

fn logprob_entry(state: &AppState, id: u32, lp: &TokenLogprobs) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = token_text(&state.tokenizer, id);
        json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    let mut e = entry(id, lp.logprob);
    e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
    e
}

/// Streams the reply as server-sent events; a client that goes away cancels the request.
fn stream(
    state: Arc<AppState>,
    meta: Meta,
    handle: RequestHandle,
    include_usage: bool,
    slot: Slot,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let send = |data: Value| tx.blocking_send(data.to_string()).is_ok();
        if !send(meta.chunk(Some(""), None, None, true)) {
            return;
        }
        while let Some(event) = handle.recv() {
            let ok = match event {
                Event::Token { id, text, logprobs } => {
                    let lp = logprobs.map(|lp| vec![logprob_entry(&state, id, &lp)]);
                    text.is_empty() && lp.is_none() || send(meta.chunk(Some(&text), lp, None, false))
                }
                Event::Done(c) => {
                    state.counters.record(&c.usage);
                    if send(meta.chunk(None, None, Some(c.finish_reason), false)) && include_usage {
                        send(meta.usage_chunk(&c));
                    }
                    let _ = tx.blocking_send("[DONE]".into());
                    return;
                }
                Event::Error(m) => {
                    let _ = send(ApiError::internal(m).body());
                    return;
                }
            };
            if !ok {
                return; // the client went away: dropping the handle cancels the request
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|data| (Ok(SseEvent::default().data(data)), rx))
    });
    Sse::new(events)
}

/// What every response of one request repeats.
struct Meta {
    api: Api,
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn new(state: &AppState, api: Api) -> Self {
        let n = state.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = if api == Api::Chat { "chatcmpl" } else { "cmpl" };
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { api, id: format!("{prefix}-{created:x}{n:06x}"), created, model: state.config.model_id.clone() }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completion, _) => "text_completion",
        }
    }

    fn usage(&self, c: &Completion) -> Value {
        let mut usage = json!({
            "prompt_tokens": c.usage.prompt_tokens,
            "completion_tokens": c.usage.completion_tokens,
            "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": c.usage.cached_tokens},
        });
        if let Some(spec) = c.speculative {
            // OpenAI's names for guessed tokens (predicted outputs), and bodega's own, as `run --json`.
            usage["completion_tokens_details"] = json!({
                "accepted_prediction_tokens": spec.accepted,
                "rejected_prediction_tokens": spec.proposed - spec.accepted,
            });
            usage["speculative"] = json!(spec);
        }
        usage
    }

    fn logprobs(&self, entries: Option<Vec<Value>>) -> Value {
        match (entries, self.api) {
            (None, _) => Value::Null,
            (Some(e), Api::Chat) => json!({"content": e}),
            (Some(e), Api::Completion) => json!({
                "tokens": e.iter().map(|x| x["token"].clone()).collect::<Vec<_>>(),
                "token_logprobs": e.iter().map(|x| x["logprob"].clone()).collect::<Vec<_>>(),
                "top_logprobs": e.iter().map(|x| x["top_logprobs"].as_array().into_iter().flatten()
                    .map(|t| (t["token"].as_str().unwrap_or_default().to_string(), t["logprob"].clone()))
                    .collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
            }),
        }
    }

    fn full_response(&self, text: &str, c: &Completion, logprobs: Vec<Value>) -> Value {
        let logprobs = self.logprobs((!logprobs.is_empty()).then_some(logprobs));
        let choice = match self.api {
            Api::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish(c.finish_reason)})
            }
            Api::Completion => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish(c.finish_reason)})
            }
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage(c)})
    }

    /// A streamed chunk: the role first (chat), then text deltas, then the finish reason.
    fn chunk(
        &self,
        text: Option<&str>,
        logprobs: Option<Vec<Value>>,
        reason: Option<FinishReason>,
        first: bool,
    ) -> Value {
        let finish_reason = reason.map_or(Value::Null, |r| json!(finish(r)));
        let logprobs = self.logprobs(logprobs);
        let choice = match self.api {
            Api::Chat => {
                let delta = match (first, text) {
                    (true, _) => json!({"role": "assistant", "content": ""}),
                    (false, Some(t)) => json!({"content": t}),
                    (false, None) => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason})
            }
            Api::Completion => {
                json!({"index": 0, "text": text.unwrap_or_default(), "logprobs": logprobs, "finish_reason": finish_reason})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }

    fn usage_chunk(&self, c: &Completion) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [], "usage": self.usage(c)})
    }
}

fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}
