//! Token ids → reply text, one token at a time: never emits half a UTF-8 character, and holds back
//! text that could be the start of a stop string until it is known not to be one.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Incremental decoder of one sequence's generated tokens.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the window re-decoded for context (spaces and merges depend on the previous token).
    prefix_offset: usize,
    /// End of the text already produced.
    read_offset: usize,
}

impl Detokenizer {
    /// Adds a token; returns the text it completes (empty while a character is incomplete).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.is_char_boundary(before.len()) {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(after[before.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (an incomplete character at the very end), for when the reply ends.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}

/// Finds stop strings in streamed text, across token boundaries.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with newly decoded text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopScan {
    /// Emit this text and go on.
    Continue(String),
    /// Emit this text (what preceded the stop string) and end the reply.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Feeds new text; returns what can be emitted safely.
    pub fn push(&mut self, text: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan::Continue(text.to_string());
        }
        self.held.push_str(text);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_stop {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopScan::Stopped(out);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopScan::Continue(out)
    }

    /// Text held back when the reply ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_over_pieces_is_found_and_excluded() {
        let mut m = StopMatcher::new(&["\nUser:".to_string()]);
        assert_eq!(m.push("Hello"), StopScan::Continue("Hello".into()));
        assert_eq!(m.push(" there\nUs"), StopScan::Continue(" there".into()));
        assert_eq!(m.push("er: hi"), StopScan::Stopped("".into()));
    }

    #[test]
    fn held_text_that_is_not_a_stop_is_released() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("the E"), StopScan::Continue("the ".into()));
        assert_eq!(m.push("xit"), StopScan::Continue("Exit".into()));
        assert_eq!(m.push("EN"), StopScan::Continue("".into()));
        assert_eq!(m.finish(), "EN");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(&["b".to_string(), "a".to_string()]);
        assert_eq!(m.push("xxaxb"), StopScan::Stopped("xx".into()));
    }
}
