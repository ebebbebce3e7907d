//! `bodega chat` driven through a pseudo-terminal with the real model: turns reuse the prefix cache,
//! slash commands take effect, Ctrl-C stops a reply and the conversation goes on, /save and /load
//! round-trip, multi-line input, tab completion, the history file; and the piped (non-terminal) mode.

mod common;

use rexpect::session::{spawn_command, PtySession};
use std::path::Path;
use std::process::{Command, Stdio};

fn spawn_chat(home: &Path) -> PtySession {
    let model = common::smollm2_path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bodega"));
    cmd.args(["-v", "chat", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", "12"])
        .args(["--kv-memory", "128M"])
        .env("BODEGA_HOME", home)
        .env("TERM", "xterm");
    spawn_command(cmd, Some(120_000)).expect("spawn bodega chat in a pty")
}

/// Waits for a reply's stats line and returns its (prompt tokens, cached tokens).
fn reply_stats(p: &mut PtySession) -> (usize, usize) {
    let (_, stats) = p.exp_regex(r"prompt: \d+ tokens \(\d+ cached\)").expect("a stats line after the reply");
    let numbers: Vec<usize> = stats.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    (numbers[0], numbers[1])
}

#[test]
fn a_terminal_session_keeps_its_conversation() {
    let home = tempfile::tempdir().unwrap();
    let mut p = spawn_chat(home.path());
    p.exp_string(">>> ").unwrap();

    // Two turns: the second prompt starts with the first turn, which the prefix cache holds.
    p.send_line("Hi! What is the capital of France?").unwrap();
    let (first_prompt, _) = reply_stats(&mut p);
    p.send_line("And of Italy?").unwrap();
    let (second_prompt, cached) = reply_stats(&mut p);
    assert!(second_prompt > first_prompt);
    assert!(cached >= 16, "the first turn's blocks come from the prefix cache: {cached} cached");
    p.send_line("/stats").unwrap();
    p.exp_string(&format!("prompt {second_prompt} tokens ({cached} cached")).unwrap();

    // Settings and the system message take effect.
    p.send_line("/set temperature 0.5").unwrap();
    p.exp_string("temperature = 0.5").unwrap();
    p.send_line("/set top_k lots").unwrap();
    p.exp_string("top_k: 'lots' is not a whole number").unwrap();
    p.send_line("/system You are a pirate.").unwrap();
    p.exp_string("system message set").unwrap();
    // Tab completes the command name.
    p.send("/sho\t").unwrap();
    p.send_line("").unwrap();
    p.exp_string("temperature 0.5").unwrap();
    p.exp_string("conversation: 5 messages; system: You are a pirate.").unwrap();

    // Ctrl-C in the middle of a long reply stops it; the next turn works. The Ctrl-C goes as soon as
    // the reply's first text shows (after the prompt's echo and the end of bracketed paste): a fixed
    // wait lost the race when the model ended its story on its own first (48 tokens in 0.35 s).
    p.send_line("/set max_tokens 2000").unwrap();
    p.exp_string("max_tokens = 2000").unwrap();
    p.send_line("Tell me a very long story about a dragon and a baker.").unwrap();
    p.exp_regex(r"baker\.\x1b\[\?2004l\r\n[^\x1b]").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("[reply stopped]").unwrap();
    p.send_line("/set max_tokens 6").unwrap();
    p.exp_string("max_tokens = 6").unwrap();
    p.send_line("Thanks!").unwrap();
    reply_stats(&mut p);

    // A multi-line block is one message.
    p.exp_string(">>> ").unwrap();
    p.send_line("\"\"\"").unwrap();
    p.exp_string("... ").unwrap();
    p.send_line("Line one.").unwrap();
    p.exp_string("... ").unwrap();
    p.send_line("Line two.\"\"\"").unwrap();
    reply_stats(&mut p);

    // /save, /clear, /load round-trip: system + 5 exchanges.
    let saved = home.path().join("talk.json");
    p.send_line(&format!("/save {}", saved.display())).unwrap();
    p.exp_string("saved 11 messages").unwrap();
    p.send_line("/clear").unwrap();
    p.exp_string("new conversation").unwrap();
    p.send_line(&format!("/load {}", saved.display())).unwrap();
    p.exp_string("loaded 11 messages").unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(json[0]["role"], "system");
    assert_eq!(json[9]["content"], "Line one.\nLine two.");

    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    let history = std::fs::read_to_string(home.path().join("chat_history")).unwrap();
    assert!(history.contains("And of Italy?"), "{history}");
}

#[test]
fn piped_input_gets_one_reply() {
    let model = common::smollm2_path();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bodega"))
            .args(["chat", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", "8", "--kv-memory", "64M"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    // The same greedy reply as `run` gives for the same message.
    let chat = run(&[], "What is 2+2?\n");
    assert!(chat.status.success());
    let reply = Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args(["run", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", "8", "--kv-memory", "64M"])
        .arg("What is 2+2?")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&chat.stdout), String::from_utf8_lossy(&reply.stdout));

    let lines = "{\"role\":\"system\",\"content\":\"Be brief.\"}\n{\"role\":\"user\",\"content\":\"Hi\"}\n";
    let json = run(&["--jsonl", "--json"], lines);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(reply["usage"]["completion_tokens"], 8);

    let bad = run(&["--jsonl"], "{\"role\":\"user\"}\n");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("stdin line 1"));
    let ends_wrong = run(&["--jsonl"], "{\"role\":\"assistant\",\"content\":\"hi\"}\n");
    assert!(String::from_utf8_lossy(&ends_wrong.stderr).contains("must end with a user message"));
}
