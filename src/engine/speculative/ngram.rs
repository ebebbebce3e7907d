//! Prompt lookup: guesses that the sequence repeats itself. The last n tokens (n from 4 down to 1)
//! are looked up earlier in the prompt and reply, and what followed their latest occurrence is
//! proposed. No second model, nothing to keep between steps; it pays off where the reply copies its
//! input (editing, summarising, extraction, code).

use super::{Proposal, ProposalRequest, Proposer};
use crate::error::Result;

/// Longest suffix looked up.
const MAX_NGRAM: usize = 4;

/// The n-gram prompt-lookup proposer (`--speculative ngram`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptLookup;

impl Proposer for PromptLookup {
    fn propose(&mut self, requests: &[ProposalRequest<'_>]) -> Result<Vec<Proposal>> {
        Ok(requests.iter().map(|r| Proposal { tokens: lookup(r.tokens, r.k, MAX_NGRAM), dists: None }).collect())
    }
}

/// Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of `tokens`
/// (at most `max_n` long) found in `tokens`; none when no suffix recurs.
pub fn lookup(tokens: &[u32], k: usize, max_n: usize) -> Vec<u32> {
    for n in (1..=max_n).rev() {
        if tokens.len() <= n {
            continue;
        }
        let suffix = &tokens[tokens.len() - n..];
        // Occurrences that start before the suffix itself, so that at least one token follows.
        if let Some(start) = (0..tokens.len() - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let from = start + n;
            return tokens[from..(from + k).min(tokens.len())].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn the_longest_recurring_suffix_decides() {
        // "1 2 3" recurs; "3" alone would also match at position 2 and 6.
        let tokens = [1, 2, 3, 4, 5, 9, 3, 7, 1, 2, 3];
        assert_eq!(lookup(&tokens, 3, 4), vec![4, 5, 9]);
    }

    #[test]
    fn the_latest_occurrence_wins_and_k_caps_the_guess() {
        let tokens = [8, 1, 5, 8, 1, 6, 8];
        // "8" recurs at 0 and 3: the latest (3) is followed by 1, 6, 8.
        assert_eq!(lookup(&tokens, 2, 4), vec![1, 6]);
        assert_eq!(lookup(&tokens, 9, 4), vec![1, 6, 8]);
    }

    #[test]
    fn nothing_is_proposed_without_a_recurrence() {
        assert!(lookup(&[1, 2, 3], 4, 4).is_empty());
        assert!(lookup(&[7], 4, 4).is_empty());
    }
}
