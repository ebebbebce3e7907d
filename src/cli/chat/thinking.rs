//! A thinking model's reasoning (`<think>…</think>`) shown apart from its answer: dimmed, or collapsed
//! to one line until `/think` shows it again. The tags may arrive split across streamed pieces, so a
//! piece that could be the start of a tag is held back until the next one decides.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";
const COLLAPSED: &str = "[thinking… /think shows it]";

/// Turns a streamed reply into what the terminal shows.
#[derive(Debug)]
pub struct ThinkingView {
    /// Show the reasoning (dimmed) rather than one collapsed line.
    show: bool,
    /// Inside `<think>…</think>`.
    thinking: bool,
    /// Text that may be the beginning of a tag.
    pending: String,
}

impl ThinkingView {
    /// A view for one reply.
    pub fn new(show: bool) -> Self {
        Self { show, thinking: false, pending: String::new() }
    }

    /// What to print for the next streamed piece.
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut out = String::new();
        loop {
            let tag = if self.thinking { CLOSE } else { OPEN };
            if let Some(at) = self.pending.find(tag) {
                let before: String = self.pending.drain(..at + tag.len()).take(at).collect();
                out += &self.text(&before);
                out += &self.switch();
                continue;
            }
            // Keep back the longest tail that could still grow into the tag.
            let keep = (1..tag.len()).rev().find(|&n| self.pending.ends_with(&tag[..n])).unwrap_or(0);
            let cut = self.pending.len() - keep;
            let text: String = self.pending.drain(..cut).collect();
            out += &self.text(&text);
            return out;
        }
    }

    /// What is still held back at the end of the reply (and the reset of an unfinished dim span).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        let mut out = self.text(&rest);
        if self.thinking && self.show {
            out += RESET;
        }
        out
    }

    fn text(&self, text: &str) -> String {
        match (self.thinking, self.show) {
            (true, false) => String::new(),
            _ => text.to_string(),
        }
    }

    fn switch(&mut self) -> String {
        self.thinking = !self.thinking;
        match (self.thinking, self.show) {
            (true, true) => DIM.to_string(),
            (false, true) => RESET.to_string(),
            (true, false) => COLLAPSED.to_string(),
            (false, false) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(show: bool, pieces: &[&str]) -> String {
        let mut view = ThinkingView::new(show);
        let mut out: String = pieces.iter().map(|p| view.push(p)).collect();
        out += &view.finish();
        out
    }

    #[test]
    fn reasoning_is_dimmed_when_shown() {
        let out = run(true, &["<think>", "\nhmm\n", "</think>", "\n\nHello"]);
        assert_eq!(out, format!("{DIM}\nhmm\n{RESET}\n\nHello"));
    }

    #[test]
    fn reasoning_collapses_to_one_line() {
        assert_eq!(run(false, &["<think>a lot", " of thought</think>", "Answer"]), format!("{COLLAPSED}Answer"));
    }

    #[test]
    fn tags_split_across_pieces_are_found() {
        assert_eq!(run(false, &["<thi", "nk>x</th", "ink>ok"]), format!("{COLLAPSED}ok"));
        assert_eq!(run(false, &["a <", "b"]), "a <b");
    }

    #[test]
    fn replies_without_thinking_pass_through() {
        assert_eq!(run(false, &["Hello", " world"]), "Hello world");
    }
}
