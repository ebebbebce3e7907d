//! `bodega serve-lite` over real HTTP on loopback with the real model: streaming and plain replies,
//! concurrency, a table of hostile requests, disconnects and graceful shutdown.

mod common;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "test-key";

/// A server child process; killed when dropped.
fn start(extra: &[&str]) -> common::Server {
    let mut args = vec!["--api-key", KEY];
    args.extend_from_slice(extra);
    common::serve_lite(&args)
}

/// One HTTP/1.0 exchange (the server closes the connection, so the body runs to EOF).
fn http(port: u16, method: &str, path: &str, auth: bool, body: &[u8]) -> (u16, String, String) {
    http_with_key(port, method, path, auth.then_some(KEY), body)
}

fn http_with_key(port: u16, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = http(port, "POST", path, true, body.to_string().as_bytes());
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

/// The `data:` payloads of an event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 12});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, _, text) = http(port, "GET", "/metrics", false, b"");
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
}

#[test]
fn streamed_deltas_equal_the_plain_reply_and_bodega_run() {
    let server = start(&[]);
    let (status, plain) = post(server.port, "/v1/chat/completions", &chat("Write a haiku about the sea.", json!({})));
    assert_eq!(status, 200, "{plain}");
    let text = plain["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(plain["usage"]["completion_tokens"], 12);
    assert_eq!(plain["usage"]["total_tokens"], plain["usage"]["prompt_tokens"].as_u64().unwrap() + 12);
    let body = chat("Write a haiku about the sea.", json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, _, stream) = http(server.port, "POST", "/v1/chat/completions", true, body.to_string().as_bytes());
    assert_eq!(status, 200);
    let data = sse_data(&stream);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);
    // The same greedy request through `bodega run`.
    let run = Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args([
            "run",
            "smollm2-135m",
            "Write a haiku about the sea.",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--json",
        ])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(run["text"].as_str().unwrap(), text);
}

#[test]
fn sixteen_concurrent_streams_all_complete() {
    let server = start(&[]);
    let port = server.port;
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let body =
                    chat(&format!("Count to {i}."), json!({"stream": true, "max_tokens": 8, "ignore_eos": true}));
                let (status, _, stream) = http(port, "POST", "/v1/chat/completions", true, body.to_string().as_bytes());
                (status, sse_data(&stream))
            })
        })
        .collect();
    for t in threads {
        let (status, data) = t.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let finish: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    }
    assert_eq!(metric(port, "bodega_kv_blocks_used"), 0.0);
    assert_eq!(metric(port, "bodega_requests_total"), 16.0);
}

/// (name, path, with the right key, body, expected status, text the error message contains)
type Hostile<'a> = (&'a str, &'a str, bool, Vec<u8>, u16, &'a str);

#[test]
fn hostile_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = start(&["--ctx-size", "256"]);
    let p = server.port;
    let good = chat("Hi", json!({})).to_string();
    let long = "word ".repeat(400).trim_end().to_string();
    let cases: Vec<Hostile> = vec![
        ("bad JSON", "/v1/chat/completions", true, b"{not json".to_vec(), 400, "not valid JSON"),
        ("empty body", "/v1/chat/completions", true, Vec::new(), 400, "JSON"),
        ("missing key", "/v1/chat/completions", false, good.clone().into_bytes(), 401, "API key"),
        ("wrong method", "/v1/models", true, Vec::new(), 405, "method"),
        (
            "huge max_tokens",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"max_tokens": 100000000})).to_string().into_bytes(),
            400,
            "exceeds the context",
        ),
        (
            "zero max_tokens",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"max_tokens": 0})).to_string().into_bytes(),
            400,
            "at least 1",
        ),
        (
            "negative temperature",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"temperature": -1})).to_string().into_bytes(),
            400,
            "temperature",
        ),
        (
            "temperature as string",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"temperature": "hot"})).to_string().into_bytes(),
            400,
            "invalid type",
        ),
        ("messages not a list", "/v1/chat/completions", true, br#"{"messages": "hi"}"#.to_vec(), 400, "invalid"),
        (
            "chat_template_kwargs not an object",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"chat_template_kwargs": 5})).to_string().into_bytes(),
            400,
            "invalid type",
        ),
        ("empty messages", "/v1/chat/completions", true, br#"{"messages": []}"#.to_vec(), 400, "must not be empty"),
        (
            "unknown role",
            "/v1/chat/completions",
            true,
            br#"{"messages": [{"role": "wizard", "content": "x"}]}"#.to_vec(),
            400,
            "unknown role",
        ),
        ("n = 2", "/v1/chat/completions", true, chat("Hi", json!({"n": 2})).to_string().into_bytes(), 400, "n = 1"),
        (
            "unknown model",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"model": "gpt-9"})).to_string().into_bytes(),
            400,
            "not served here",
        ),
        (
            "prompt too long",
            "/v1/completions",
            true,
            json!({"prompt": long}).to_string().into_bytes(),
            400,
            "prompt is 400 tokens but the context holds 256",
        ),
        ("10 MB body", "/v1/chat/completions", true, vec![b' '; 10 << 20], 413, "larger than"),
        (
            "invalid UTF-8",
            "/v1/chat/completions",
            true,
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9\"}]}".to_vec(),
            400,
            "JSON",
        ),
        (
            "top_logprobs too many",
            "/v1/chat/completions",
            true,
            chat("Hi", json!({"logprobs": true, "top_logprobs": 50})).to_string().into_bytes(),
            400,
            "top_logprobs",
        ),
        ("no such route", "/v1/embeddings", true, good.clone().into_bytes(), 404, "no such route"),
    ];
    for (name, path, auth, body, status, needle) in cases {
        let (got, _, text) = http(p, "POST", path, auth, &body);
        assert_eq!(got, status, "{name}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text}"));
        let message = err["error"]["message"].as_str().unwrap_or_else(|| panic!("{name}: no error object: {text}"));
        assert!(message.contains(needle), "{name}: {message}");
        assert!(err["error"]["type"].is_string(), "{name}");
        let (ok, reply) = post(p, "/v1/chat/completions", &chat("Hi", json!({"max_tokens": 2})));
        assert_eq!(ok, 200, "after {name}: {reply}");
    }
    let (status, _, text) = http_with_key(p, "GET", "/v1/models", Some("wrong"), b"");
    assert_eq!(status, 401, "{text}");
    let (status, _, models) = http(p, "GET", "/v1/models", true, b"");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "smollm2-135m");
    let (status, _, health) = http(p, "GET", "/health", false, b"");
    assert_eq!((status, health.contains("ok")), (200, true));
}

/// Starts a long streaming request and returns its connection once the first events have arrived.
fn open_long_stream(port: u16, max_tokens: u32) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body =
        chat("Tell me a very long story.", json!({"stream": true, "max_tokens": max_tokens, "ignore_eos": true}));
    let body = body.to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 800]; // headers, the role chunk and a few content deltas
    s.read_exact(&mut first).unwrap();
    s
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_blocks() {
    let server = start(&[]);
    let s = open_long_stream(server.port, 5000);
    wait_for_metric(server.port, "bodega_kv_blocks_used", |used| used > 0.0, "a decoding stream holds blocks");
    drop(s);
    wait_for_metric(
        server.port,
        "bodega_kv_blocks_used",
        |used| used == 0.0,
        "blocks were not returned after the disconnect",
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut server = start(&[]);
    let port = server.port;
    let request = std::thread::spawn(move || {
        post(port, "/v1/chat/completions", &chat("Hello", json!({"max_tokens": 200, "ignore_eos": true})))
    });
    wait_for_metric(port, "bodega_requests_running", |running| running >= 1.0, "the request never started");
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    let (status, reply) = request.join().unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["usage"]["completion_tokens"], 200);
    let exit = server.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn the_official_openai_python_client_works() {
    let python = std::env::var("BODEGA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("set BODEGA_TEST_PYTHON to a Python with the openai package (scripts/test.sh makes one: pip install openai)")
    });
    let server = start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let url = format!("http://127.0.0.1:{}/v1", server.port);
    let out = Command::new(&python).args([script, &url, KEY]).output().expect("run the openai client script");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client failed: {err}{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn curl_bench_reports_aggregate_throughput_from_usage() {
    let server = start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/curl-bench.sh");
    let url = format!("http://127.0.0.1:{}", server.port);
    let out = Command::new("bash")
        .args([script, &url, "8", "16"])
        .env("API_KEY", KEY)
        .output()
        .expect("run scripts/curl-bench.sh (needs bash and curl)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("8 requests, 128 generated tokens in"), "{stdout}");
    assert!(stdout.contains("tok/s aggregate"));
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = start(&["--max-queue", "1"]);
    let s = open_long_stream(server.port, 2000);
    let (status, head, text) =
        http(server.port, "POST", "/v1/chat/completions", true, chat("Hi", json!({})).to_string().as_bytes());
    assert_eq!(status, 429, "{text}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "queue_full");
    drop(s);
    // Once the stream is gone, the server takes requests again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = post(server.port, "/v1/chat/completions", &chat("Hi", json!({"max_tokens": 2})));
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused after the stream ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a metric, or `None` when the page does not have it.
fn metric_if_any(port: u16, name: &str) -> Option<f64> {
    let (_, _, text) = http(port, "GET", "/metrics", false, b"");
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map(|v| v.parse().unwrap())
}

#[test]
fn metrics_show_the_sliding_window_pool_of_a_model_that_has_one() {
    assert_eq!(metric_if_any(start(&[]).port, "bodega_kv_window_blocks_total"), None, "SmolLM2 has no window");
    common::demo_path("gemma3-270m");
    let server = common::serve("gemma3-270m", &["--api-key", KEY]);
    let port = server.port;
    let total = metric_if_any(port, "bodega_kv_window_blocks_total").expect("a window pool for Gemma 3");
    assert!(total > 0.0 && total < metric(port, "bodega_kv_blocks_total"), "window pool {total}");
    let body = json!({"model": "gemma3-270m", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true,
                      "temperature": 0, "stream": true});
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.to_string();
    write!(s, "POST /v1/completions HTTP/1.0\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    // The stream's first chunk goes out before the engine has admitted the request (and the gauges are
    // published after each step), so wait for the prefill rather than read once.
    let mut first = [0u8; 400];
    s.read_exact(&mut first).unwrap();
    wait_for_metric(port, "bodega_kv_window_blocks_used", |used| used > 0.0, "a decoding Gemma 3 holds window blocks");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"), "the stream ended early");
    wait_for_metric(port, "bodega_kv_window_blocks_used", |used| used == 0.0, "window blocks were not returned");
}

/// Polls a gauge until `holds` accepts it; fails with `what` after ten seconds.
fn wait_for_metric(port: u16, name: &str, holds: impl Fn(f64) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds(metric(port, name)) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
