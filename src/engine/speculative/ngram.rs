//! Prompt lookup: guesses that the sequence repeats itself. The last n tokens (n from 4 down to 1)
//! are looked up earlier in the prompt and reply, and what followed their latest occurrence is
//! proposed. No second model, nothing to keep between steps; it pays off where the reply copies its
//! input (editing, summarising, extraction, code). A single recurring token is a weak hint (common
//! words recur everywhere): it proposes one guess, whose outcome does not steer the sequence's
//! adaptive guess count. Replaying the copy-edit replies, proposing full guesses from one-token
//! matches cost a tenth of the speed-up; this rule keeps all of it (docs/perf.md).

use super::{Proposal, ProposalRequest, Proposer};
use crate::error::Result;

/// Longest suffix looked up.
const MAX_NGRAM: usize = 4;

/// The n-gram prompt-lookup proposer (`--speculative ngram`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptLookup;

impl Proposer for PromptLookup {
    fn propose(&mut self, requests: &[ProposalRequest<'_>]) -> Result<Vec<Proposal>> {
        Ok(requests
            .iter()
            .map(|r| {
                let (mut tokens, n) = lookup(r.tokens, r.k, MAX_NGRAM);
                let weak = n == 1;
                if weak {
                    tokens.truncate(1);
                }
                Proposal { tokens, dists: None, weak }
            })
            .collect())
    }
}

/// Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of `tokens`
/// (at most `max_n` long) found in `tokens`, and that suffix's length; nothing and 0 when no suffix
/// recurs.
pub fn lookup(tokens: &[u32], k: usize, max_n: usize) -> (Vec<u32>, usize) {
    for n in (1..=max_n).rev() {
        if tokens.len() <= n {
            continue;
        }
        let suffix = &tokens[tokens.len() - n..];
        // Occurrences that start before the suffix itself, so that at least one token follows.
        if let Some(start) = (0..tokens.len() - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let from = start + n;
            return (tokens[from..(from + k).min(tokens.len())].to_vec(), n);
        }
    }
    (Vec::new(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_recurring_suffix_decides() {
        // "1 2 3" recurs; "2 3" and "3" alone would also match at other positions.
        let tokens = [1, 2, 3, 4, 5, 9, 2, 3, 7, 1, 2, 3];
        assert_eq!(lookup(&tokens, 3, 4), (vec![4, 5, 9], 3));
    }

    #[test]
    fn the_latest_occurrence_wins_and_k_caps_the_guess() {
        let tokens = [8, 1, 5, 8, 1, 6, 8, 1];
        // "8 1" recurs at 0 and 3: the latest (3) is followed by 6, 8, 1.
        assert_eq!(lookup(&tokens, 2, 4), (vec![6, 8], 2));
        assert_eq!(lookup(&tokens, 9, 4), (vec![6, 8, 1], 2));
    }

    #[test]
    fn nothing_is_proposed_without_a_recurrence() {
        assert_eq!(lookup(&[1, 2, 3], 4, 4), (vec![], 0));
        assert_eq!(lookup(&[7], 4, 4), (vec![], 0));
    }

    #[test]
    fn one_recurring_token_is_a_weak_hint_of_one_guess() {
        // "3" recurs, no pair does.
        let tokens = [3, 4, 5, 6, 3];
        assert_eq!(lookup(&tokens, 2, 4), (vec![4, 5], 1));
        let sampling = crate::engine::SamplingParams::default();
        let request = ProposalRequest { seq: 0, tokens: &tokens, prompt_len: 2, k: 4, sampling: &sampling };
        let proposal = PromptLookup.propose(&[request]).unwrap().remove(0);
        assert_eq!((proposal.tokens, proposal.weak), (vec![4], true));
        let copying = [1, 2, 3, 1, 2];
        let request = ProposalRequest { seq: 0, tokens: &copying, prompt_len: 2, k: 4, sampling: &sampling };
        let proposal = PromptLookup.propose(&[request]).unwrap().remove(0);
        assert_eq!((proposal.tokens, proposal.weak), (vec![3, 1, 2], false));
    }
}
