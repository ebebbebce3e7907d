//! `bodega run --each-line`: every stdin line is a prompt; all go to the engine at once (at most
//! `--concurrency` in flight) and are batched together; replies come out in input order. The first
//! unfinished reply streams live while later ones finish in the background.

use super::{print_stats, JsonReply, RunArgs};
use crate::cli::interrupt_flag;
use crate::cli::load::Loaded;
use crate::cli::output::Stdout;
use crate::cli::Interrupted;
use crate::engine::{Completion, Event, FinishReason, RequestHandle, SamplingParams};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One input line's progress.
enum Line {
    /// Not submitted yet.
    Pending(String),
    /// In the engine.
    Running { handle: RequestHandle, prompt_ids: Vec<u32>, text: String, printed: usize },
    /// Finished.
    Done { prompt_ids: Vec<u32>, text: String, printed: usize, completion: Completion },
    /// Failed before or inside the engine.
    Failed(String),
}

/// Runs every line and prints the replies in order; a failed line makes the exit code 1.
pub(super) fn run_lines(
    args: &RunArgs,
    loaded: &Loaded,
    sampling: &SamplingParams,
    inputs: Vec<Result<String, String>>,
) -> anyhow::Result<()> {
    let interrupted = interrupt_flag();
    let mut lines: Vec<Line> = inputs.into_iter().map(|l| l.map_or_else(Line::Failed, Line::Pending)).collect();
    let limit = args.concurrency.map_or(usize::MAX, |n| n as usize);
    let mut stdout = Stdout::new();
    let (mut next_out, mut failures) = (0, 0);
    while next_out < lines.len() {
        let in_flight = lines.iter().filter(|l| matches!(l, Line::Running { .. })).count();
        let free = limit.saturating_sub(in_flight);
        for line in lines.iter_mut().filter(|l| matches!(l, Line::Pending(_))).take(free) {
            submit(args, loaded, sampling, line);
        }
        if interrupted.load(Ordering::Relaxed) {
            cancel_all(&mut lines);
        }
        let mut progressed = false;
        for (i, line) in lines.iter_mut().enumerate() {
            progressed |= poll(line, i == next_out && !args.json, &mut stdout)?;
        }
        while next_out < lines.len() && matches!(lines[next_out], Line::Done { .. } | Line::Failed(_)) {
            failures += usize::from(matches!(lines[next_out], Line::Failed(_)));
            print_line(args, next_out, &mut lines[next_out], &mut stdout)?;
            next_out += 1;
            progressed = true;
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if interrupted.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} prompts failed", lines.len());
    }
    Ok(())
}

fn submit(args: &RunArgs, loaded: &Loaded, sampling: &SamplingParams, line: &mut Line) {
    let Line::Pending(prompt) = line else { return };
    let submitted = args.encode(loaded, prompt).and_then(|ids| {
        let handle = loaded.engine.submit(args.request(ids.clone(), sampling))?;
        Ok((handle, ids))
    });
    *line = match submitted {
        Ok((handle, prompt_ids)) => Line::Running { handle, prompt_ids, text: String::new(), printed: 0 },
        Err(e) => Line::Failed(e.to_string()),
    };
}

fn cancel_all(lines: &mut [Line]) {
    for line in lines.iter_mut() {
        match line {
            Line::Running { handle, .. } => handle.cancel(),
            Line::Pending(_) => *line = Line::Failed("interrupted".into()),
            _ => {}
        }
    }
}

/// Takes the events that have arrived for a running line; streams its text when it is the line
/// being printed. Returns whether anything arrived.
fn poll(line: &mut Line, live: bool, stdout: &mut Stdout) -> anyhow::Result<bool> {
    let Line::Running { handle, text, printed, prompt_ids } = line else { return Ok(false) };
    let mut progressed = false;
    while let Ok(event) = handle.recv_timeout(Duration::ZERO) {
        progressed = true;
        match event {
            Event::Token { text: piece, .. } => text.push_str(&piece),
            Event::Done(completion) => {
                let (text, printed, prompt_ids) = (std::mem::take(text), *printed, std::mem::take(prompt_ids));
                *line = Line::Done { prompt_ids, text, printed, completion };
                break;
            }
            Event::Error(message) => {
                *line = Line::Failed(message);
                break;
            }
        }
    }
    if let Line::Running { text, printed, .. } | Line::Done { text, printed, .. } = line {
        if live && *printed < text.len() {
            stdout.write(&text[*printed..])?;
            *printed = text.len();
        }
    }
    Ok(progressed)
}

/// Prints a finished line: the rest of its reply and an empty line, or one JSON object.
fn print_line(args: &RunArgs, index: usize, line: &mut Line, stdout: &mut Stdout) -> anyhow::Result<()> {
    match line {
        Line::Done { prompt_ids, text, printed, completion } => {
            if args.json {
                let reply = JsonReply::new(Some(index), text, prompt_ids, completion);
                stdout.write(&(serde_json::to_string(&reply)? + "\n"))?;
            } else {
                stdout.write(&text[*printed..])?;
                stdout.write(if text.ends_with('\n') { "\n" } else { "\n\n" })?;
            }
            if completion.finish_reason != FinishReason::Cancelled && tracing::enabled!(tracing::Level::DEBUG) {
                print_stats(completion);
            }
        }
        Line::Failed(message) => {
            eprintln!("error: line {}: {message}", index + 1);
            if args.json {
                let error = json!({"index": index, "error": {"message": message, "type": "invalid_request_error"}});
                stdout.write(&(error.to_string() + "\n"))?;
            } else {
                stdout.write("\n")?;
            }
        }
        _ => {}
    }
    Ok(())
}
