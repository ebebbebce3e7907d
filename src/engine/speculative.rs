//! Speculative decoding: cheap guesses of a sequence's next tokens, checked by the target model in the
//! same forward pass as every other sequence's work.
//!
//! A [`Proposer`] guesses up to k tokens per decoding sequence: [`ngram::PromptLookup`] copies what
//! followed the last n tokens earlier in the sequence, [`draft::DraftModel`] runs a smaller model with
//! the same tokenizer. The target then scores the sequence's last token and the k guesses (k + 1
//! positions, logits for each), and [`verify_token`] accepts guesses left to right with the standard
//! rejection-sampling rule, so that every emitted token follows exactly the distribution the sampler
//! would have drawn it from without speculation. Greedy is the special case where that distribution
//! is one token: guesses are accepted while they equal the target's argmax.
//!
//! How many tokens a sequence proposes adapts to its recent acceptance ([`AdaptiveK`]); the engine
//! also switches speculation off for a step in which more than [`Speculation::max_batch`] sequences
//! decode, where the batch is large enough for the forward pass to be compute-bound and extra
//! positions cost nearly as much as real tokens.

pub mod draft;
pub mod ngram;

use super::request::SamplingParams;
use super::sampler::{Distribution, Sampler};
use super::scheduler::SeqId;
use crate::error::Result;
use serde::Serialize;
use std::collections::HashMap;

/// Tokens proposed per sequence and step at most, by default (`--spec-tokens`). N-gram guesses
/// cost nothing to make, so they reach further (8); each of a draft model's guesses is one forward
/// pass of the draft (4). Each sequence adapts below the maximum to its own acceptance.
pub fn default_spec_tokens(draft_model: bool) -> usize {
    if draft_model {
        4
    } else {
        8
    }
}

/// By default, speculation is off in a step where more than this many sequences decode
/// (`--spec-max-batch`): where verifying guesses starts to cost more than it saves, measured with
/// the copy-edit scenario (`docs/perf.md`). On 2 CPU cores, n-gram speculation gave 1.51× at 1
/// sequence, 1.04× at 4 and 0.96× at 8; on an H200 with greedy rows sampled on the GPU, 1.49× at
/// 16 and 1.28× at 64 on real text, 1.02× at 16 and 0.90× at 64 on random weights (few guesses
/// accepted).
pub fn default_spec_max_batch(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        4
    } else {
        16
    }
}

/// Below this many accepted tokens per verification (a running average), a sequence stops
/// proposing, and only probes with one token every [`PROBE_EVERY`] steps.
const MIN_WORTHWHILE: f32 = 0.3;
/// Steps a sequence whose guesses keep failing waits before it tries one guess again.
const PROBE_EVERY: u32 = 8;

/// One decoding sequence a proposer is asked about.
#[derive(Debug, Clone, Copy)]
pub struct ProposalRequest<'a> {
    /// Whose.
    pub seq: SeqId,
    /// The prompt and the generated tokens so far.
    pub tokens: &'a [u32],
    /// How many of `tokens` are the prompt (penalties look at the reply only).
    pub prompt_len: usize,
    /// Guesses wanted at most.
    pub k: usize,
    /// The request's sampling settings: a draft model samples its guesses with them.
    pub sampling: &'a SamplingParams,
}

/// Guesses for one sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// The guessed tokens, in order (possibly none).
    pub tokens: Vec<u32>,
    /// The distribution each guess was drawn from (a draft model's); `None` for deterministic
    /// guesses, which verification treats as one-hot distributions.
    pub dists: Option<Vec<Distribution>>,
    /// Guessed from a weak hint (a one-token n-gram match): verified like any guess, but its outcome
    /// does not change how many guesses the sequence asks for next, so that stray matches of common
    /// words do not cut a copying sequence's guesses short.
    pub weak: bool,
}

/// Something that guesses the next tokens of decoding sequences.
pub trait Proposer: Send {
    /// Up to `k` guesses for each request, in the order of `requests`.
    fn propose(&mut self, requests: &[ProposalRequest<'_>]) -> Result<Vec<Proposal>>;

    /// The sequence has ended: drop whatever the proposer keeps for it.
    fn forget(&mut self, _seq: SeqId) {}

    /// Called once by the engine with its own KV pool's size, so that a proposer with a cache of its
    /// own can hold as many tokens.
    fn reserve(&mut self, _num_blocks: usize, _block_size: usize) -> Result<()> {
        Ok(())
    }
}

/// The engine's speculative decoding: the proposer and its limits.
pub struct Speculation {
    /// Where guesses come from.
    pub proposer: Box<dyn Proposer>,
    /// Guesses per sequence and step at most (the adaptive k's ceiling).
    pub max_tokens: usize,
    /// Speculation is off in a step where more than this many sequences decode.
    pub max_batch: usize,
}

/// Proposed and accepted guesses: of one request (`run --json`, the server's usage) or of the whole
/// engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpecCounts {
    /// Guessed tokens the target verified.
    pub proposed: u64,
    /// Guessed tokens it accepted.
    pub accepted: u64,
}

impl SpecCounts {
    /// Adds one verification.
    pub fn add(&mut self, proposed: usize, accepted: usize) {
        self.proposed += proposed as u64;
        self.accepted += accepted as u64;
    }
}

/// How many tokens one sequence proposes next, from how many it had accepted recently: one more than
/// its running average, up to the maximum; none while its guesses keep failing, except a one-token
/// probe now and then, so that a sequence that starts copying is noticed.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveK {
    max: usize,
    /// Running average of accepted guesses per verification (halved weight per step).
    recent: f32,
    /// Steps since the last probe while paused.
    paused: u32,
}

impl AdaptiveK {
    /// Starts optimistic, at `max`.
    pub fn new(max: usize) -> Self {
        Self { max, recent: max as f32, paused: 0 }
    }

    /// Guesses to ask for this step (0: do not speculate this step); counts the step when paused.
    pub fn next_k(&mut self) -> usize {
        if self.max == 0 {
            return 0;
        }
        if self.recent < MIN_WORTHWHILE {
            self.paused += 1;
            if self.paused < PROBE_EVERY {
                return 0;
            }
            self.paused = 0;
            return 1;
        }
        (self.recent.round() as usize + 1).clamp(1, self.max)
    }

    /// Records a verification's outcome.
    pub fn record(&mut self, accepted: usize) {
        self.recent = 0.5 * self.recent + 0.5 * accepted as f32;
    }
}

/// The outcome of checking one guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The guess stands.
    Accepted,
    /// The guess is rejected; this token replaces it and verification stops.
    Rejected(u32),
}

/// Checks the guess `draft`, drawn from `q` (`None`: a deterministic guess, q one-hot), against the
/// target's distribution `p` at the same position: accepted with probability min(1, p(draft) /
/// q(draft)); on rejection the replacement is drawn from max(0, p − q), normalised. The token that
/// comes out is distributed exactly as p (Leviathan et al. 2023, Chen et al. 2023). Random numbers
/// come from the sequence's own stream, and only when the outcome is not certain.
pub fn verify_token(sampler: &mut Sampler, p: &Distribution, q: Option<&Distribution>, draft: u32) -> Verdict {
    let p_draft = p.prob(draft);
    let q_draft = q.map_or(1.0, |q| q.prob(draft));
    let accept = if p_draft >= q_draft {
        true
    } else if p_draft <= 0.0 {
        false
    } else {
        sampler.uniform() < p_draft / q_draft
    };
    if accept {
        return Verdict::Accepted;
    }
    let q_of: HashMap<u32, f32> = match q {
        Some(q) => q.0.iter().copied().collect(),
        None => HashMap::from([(draft, 1.0)]),
    };
    let residual: Vec<(u32, f32)> =
        p.0.iter()
            .map(|&(id, prob)| (id, (prob - q_of.get(&id).copied().unwrap_or(0.0)).max(0.0)))
            .filter(|&(_, r)| r > 0.0)
            .collect();
    let total: f32 = residual.iter().map(|(_, r)| r).sum();
    // Rejection implies p(draft) < q(draft), so p − q has positive mass; rounding aside.
    let residual = match total > 0.0 {
        true => Distribution(residual.into_iter().map(|(id, r)| (id, r / total)).collect()),
        false => p.clone(),
    };
    Verdict::Rejected(sampler.draw(&residual))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(seed: u64, temperature: f32) -> Sampler {
        Sampler::new(SamplingParams { seed, temperature, ..SamplingParams::default() })
    }

    #[test]
    fn greedy_verification_accepts_exactly_the_argmax() {
        let p = Distribution(vec![(3, 1.0)]);
        let mut s = sampler(0, 0.0);
        assert_eq!(verify_token(&mut s, &p, None, 3), Verdict::Accepted);
        assert_eq!(verify_token(&mut s, &p, None, 4), Verdict::Rejected(3));
        let q = Distribution(vec![(4, 1.0)]);
        assert_eq!(verify_token(&mut s, &p, Some(&q), 4), Verdict::Rejected(3));
    }

    #[test]
    fn a_guess_the_target_never_makes_is_always_replaced() {
        let p = Distribution(vec![(1, 0.6), (2, 0.4)]);
        let mut s = sampler(5, 1.0);
        for _ in 0..100 {
            assert!(matches!(verify_token(&mut s, &p, None, 9), Verdict::Rejected(1 | 2)));
        }
    }

    /// Chi-square critical value at significance 0.001 for 5 degrees of freedom.
    const CHI2_5_DOF_0_001: f64 = 20.515;

    /// Draws `n` verified tokens: a guess from `q` (or the fixed `guess` when `q` is None), checked
    /// against `p`; returns the chi-square statistic of the outcomes against `p` over its 6 tokens.
    fn chi_square(p: &Distribution, q: Option<&Distribution>, guess: u32, n: usize, seed: u64) -> f64 {
        let mut verifier = sampler(seed, 1.0);
        let mut drafter = sampler(seed ^ 0xd4af, 1.0);
        let mut counts = [0usize; 6];
        for _ in 0..n {
            let draft = q.map_or(guess, |q| drafter.draw(q));
            let token = match verify_token(&mut verifier, p, q, draft) {
                Verdict::Accepted => draft,
                Verdict::Rejected(t) => t,
            };
            counts[token as usize] += 1;
        }
        p.0.iter()
            .map(|&(id, prob)| (counts[id as usize] as f64 - prob as f64 * n as f64).powi(2) / (prob as f64 * n as f64))
            .sum()
    }

    fn target() -> Distribution {
        Distribution(vec![(2, 0.35), (0, 0.25), (4, 0.15), (1, 0.12), (5, 0.08), (3, 0.05)])
    }

    #[test]
    fn verified_draft_samples_follow_the_target_distribution() {
        // A draft that favours other tokens than the target, and never proposes token 1.
        let q = Distribution(vec![(0, 0.5), (3, 0.2), (5, 0.2), (2, 0.05), (4, 0.05)]);
        for seed in 0..3 {
            let chi2 = chi_square(&target(), Some(&q), 0, 20_000, seed);
            assert!(chi2 < CHI2_5_DOF_0_001, "seed {seed}: chi-square {chi2:.2} (p < 0.001)");
        }
    }

    #[test]
    fn verified_deterministic_guesses_follow_the_target_distribution() {
        for (seed, guess) in [(0, 2), (1, 3), (2, 1)] {
            let chi2 = chi_square(&target(), None, guess, 20_000, seed);
            assert!(chi2 < CHI2_5_DOF_0_001, "guess {guess}: chi-square {chi2:.2} (p < 0.001)");
        }
    }

    #[test]
    fn adaptive_k_grows_with_acceptance_and_pauses_on_failure() {
        let mut k = AdaptiveK::new(4);
        assert_eq!(k.next_k(), 4);
        for _ in 0..6 {
            k.record(0);
        }
        let probes: Vec<usize> = (0..PROBE_EVERY).map(|_| k.next_k()).collect();
        assert_eq!(probes.iter().filter(|&&n| n == 0).count(), PROBE_EVERY as usize - 1);
        assert_eq!(probes.last(), Some(&1), "a paused sequence probes with one guess");
        for _ in 0..6 {
            k.record(4);
        }
        assert_eq!(k.next_k(), 4);
        k.record(1);
        k.record(1);
        k.record(1);
        assert_eq!(k.next_k(), 2, "one more than the recent average");
    }
}
