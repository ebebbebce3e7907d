//! An OpenAI-compatible server as a benchmark target (bodega serve-lite, llama-server, vLLM,
//! mlx_lm.server, Ollama, LM Studio): streamed `/v1/completions` (raw prompts) or
//! `/v1/chat/completions` (conversations), with `ignore_eos` and `stream_options.include_usage` so
//! that token counts come from the server's `usage`, never from counting chunks.

use super::metrics::RequestRecord;
use super::target::{failed, CANCELLED, STOP_POLL};
use super::workload::{Prompt, PromptBody};
use crate::engine::SamplingParams;
use crate::error::{Error, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long connecting and the first byte of a response may take before a request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server and the model name its requests carry.
pub struct HttpTarget {
    client: reqwest::Client,
    /// `scheme://host:port` (any `/v1` suffix removed).
    base: String,
    /// The `model` field of every request.
    pub model: String,
}

impl HttpTarget {
    /// Checks that `url` answers and picks the model: `model` when given, else the first one the
    /// server's `/v1/models` lists. `api_key` goes with every request as a bearer token.
    pub async fn connect(url: &str, model: Option<String>, api_key: Option<&str>) -> Result<Self> {
        let bad = |m: String| Error::Bench(format!("{url}: {m}"));
        if url.starts_with("https://") {
            return Err(bad("https is not supported; benchmark the server over plain http on its local port".into()));
        }
        if !url.starts_with("http://") {
            return Err(bad("not an http:// URL (example: http://127.0.0.1:8080)".into()));
        }
        let base = url.trim_end_matches('/').trim_end_matches("/v1").trim_end_matches('/').to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| bad("the API key has characters a header cannot carry".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let listed = client
            .get(format!("{base}/v1/models"))
            .timeout(CONNECT_TIMEOUT)
            .send()
            .await
            .map_err(|e| bad(format!("cannot connect ({}); is the server running?", root_cause(&e))))?;
        if !listed.status().is_success() {
            let status = listed.status();
            let hint = if status.as_u16() == 401 { " (give the server's key with --api-key)" } else { "" };
            return Err(bad(format!("/v1/models answered {status}{hint}")));
        }
        let model = match model {
            Some(m) => m,
            None => {
                let body: Value = listed.json().await.map_err(|e| bad(format!("/v1/models: {e}")))?;
                body["data"][0]["id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("/v1/models lists no model; name one with --served-model".into()))?
            }
        };
        Ok(Self { client, base, model })
    }

    /// The server's address, as the report shows it.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends one streamed request and records its chunks and usage.
    pub async fn send(&self, prompt: &Prompt, stop: &Arc<AtomicBool>) -> RequestRecord {
        let started = Instant::now();
        let mut record = match self.stream(prompt, stop, started).await {
            Ok(record) => record,
            Err(message) => failed(prompt.output_len, message),
        };
        record.e2e = started.elapsed().as_secs_f64();
        record
    }

    async fn stream(
        &self,
        prompt: &Prompt,
        stop: &AtomicBool,
        started: Instant,
    ) -> std::result::Result<RequestRecord, String> {
        let (path, body) = request_body(&self.model, prompt);
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", root_cause(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(format!("HTTP {status}: {}", message.trim()));
        }
        let mut record = RequestRecord { requested_tokens: prompt.output_len, ..Default::default() };
        let mut usage = None;
        let mut events = SseLines::default();
        let mut bytes = response.bytes_stream();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(CANCELLED.into());
            }
            let piece = match tokio::time::timeout(STOP_POLL, bytes.next()).await {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(piece)) => piece.map_err(|e| format!("stream broke: {}", root_cause(&e)))?,
            };
            for data in events.push(&piece) {
                if data == "[DONE]" {
                    return finish(record, usage);
                }
                let chunk: Value =
                    serde_json::from_str(&data).map_err(|e| format!("bad stream chunk ({e}): {data}"))?;
                if let Some(message) = chunk["error"]["message"].as_str() {
                    return Err(message.to_string());
                }
                let choice = &chunk["choices"][0];
                let text = choice["text"].as_str().or(choice["delta"]["content"].as_str()).unwrap_or_default();
                if !text.is_empty() {
                    record.chunk_times.push(started.elapsed().as_secs_f64());
                    record.text.push_str(text);
                }
                if chunk["usage"].is_object() {
                    usage = Some(chunk["usage"].clone());
                }
            }
        }
        finish(record, usage)
    }
}

/// Fills the token counts from `usage`; a server that sent none fails the request (counting chunks
/// would count the wrong thing).
fn finish(mut record: RequestRecord, usage: Option<Value>) -> std::result::Result<RequestRecord, String> {
    let usage = usage.ok_or("the server sent no usage (it must honour stream_options.include_usage)")?;
    let count = |v: &Value| v.as_u64().map(|n| n as usize);
    record.prompt_tokens = count(&usage["prompt_tokens"]).ok_or("usage has no prompt_tokens")?;
    record.completion_tokens = count(&usage["completion_tokens"]).ok_or("usage has no completion_tokens")?;
    record.cached_tokens = count(&usage["prompt_tokens_details"]["cached_tokens"]);
    Ok(record)
}

/// The innermost error message (reqwest wraps hyper wraps io).
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Splits a server-sent-event byte stream into `data:` payloads, across chunk borders.
#[derive(Debug, Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") {
                out.push(data.trim_start().to_string());
            }
        }
        out
    }
}

/// The endpoint and streamed request body for `prompt` (raw text to `/v1/completions`, a
/// conversation to `/v1/chat/completions`): exactly `output_len` tokens, EOS ignored, greedy or
/// sampled at the prompt's temperature with the in-process engine's sampler settings, so that every
/// target samples alike (`top_k` is an extension that llama-server, vLLM and serve-lite take).
fn request_body(model: &str, prompt: &Prompt) -> (&'static str, Value) {
    let mut body = json!({
        "model": model,
        "max_tokens": prompt.output_len,
        "temperature": prompt.temperature,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if prompt.temperature > 0.0 {
        let sampler = SamplingParams::default();
        body["top_k"] = json!(sampler.top_k);
        body["top_p"] = json!(sampler.top_p);
        body["seed"] = json!(sampler.seed);
    }
    let path = match &prompt.body {
        PromptBody::Text(text) => {
            body["prompt"] = json!(text);
            "/v1/completions"
        }
        PromptBody::Chat(messages) => {
            body["messages"] =
                messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Value>();
            "/v1/chat/completions"
        }
    };
    (path, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_payloads_survive_split_chunks() {
        let mut lines = SseLines::default();
        assert!(lines.push(b"data: {\"a\"").is_empty());
        assert_eq!(lines.push(b":1}\r\n\r\n: keep-alive\ndata: [DONE]\n"), ["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn usage_is_required_and_read() {
        let record = RequestRecord::default();
        assert!(finish(record.clone(), None).unwrap_err().contains("include_usage"));
        let usage = json!({"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}});
        let r = finish(record, Some(usage)).unwrap();
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.cached_tokens), (7, 3, Some(4)));
    }

    #[test]
    fn request_bodies_are_greedy_or_sample_as_the_engine_does() {
        let prompt =
            |temperature| Prompt { body: PromptBody::Text("Hi".into()), ids: vec![1], output_len: 5, temperature };
        let (path, greedy) = request_body("m", &prompt(0.0));
        assert_eq!(path, "/v1/completions");
        assert_eq!(
            (&greedy["prompt"], &greedy["max_tokens"], &greedy["ignore_eos"]),
            (&json!("Hi"), &json!(5), &json!(true))
        );
        assert_eq!(greedy["temperature"], json!(0.0));
        assert!(greedy.get("top_k").is_none() && greedy.get("seed").is_none(), "greedy needs no sampler settings");
        let (_, sampled) = request_body("m", &prompt(0.5));
        let engine = SamplingParams::default();
        assert_eq!(sampled["temperature"], json!(0.5));
        assert_eq!((&sampled["top_k"], &sampled["seed"]), (&json!(engine.top_k), &json!(engine.seed)));
        assert_eq!(sampled["top_p"].as_f64().unwrap() as f32, engine.top_p);
        let chat = Prompt { body: PromptBody::Chat(vec![crate::tokenizer::Message::new("user", "Hi")]), ..prompt(0.0) };
        let (path, body) = request_body("m", &chat);
        assert_eq!((path, &body["messages"][0]["content"]), ("/v1/chat/completions", &json!("Hi")));
    }
}
