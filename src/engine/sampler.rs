//! Logits → next token for one sequence: repetition penalty, top-k, top-p, min-p, temperature, then
//! a draw from the request's own seeded random stream (llama.cpp's order), or argmax when greedy.

use super::request::{SamplingParams, TokenLogprobs};
use crate::ops::cpu::argmax;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A sequence's sampler: its settings and its random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler whose draws depend only on `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng, candidates: Vec::new() }
    }

    /// Whether this sampler's token is always the argmax of the raw logits (temperature 0, no
    /// penalties, no logprobs): then the engine asks the runner for the token alone
    /// ([`crate::runner::StepRow::Greedy`]) and the logits never leave the device.
    pub fn greedy_only(&self) -> bool {
        let p = &self.params;
        p.temperature <= 0.0
            && p.logprobs.is_none()
            && p.repeat_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    /// Picks the next token from `logits`, given the sequence's tokens so far (`history`, whose
    /// first `prompt_len` are the prompt), with its log-probabilities when the request wants them.
    pub fn sample_with_logprobs(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        prompt_len: usize,
    ) -> (u32, Option<TokenLogprobs>) {
        let Some(n) = self.params.logprobs else { return (self.sample(logits, history, prompt_len), None) };
        let raw = logits.to_vec();
        let token = self.sample(logits, history, prompt_len);
        (token, Some(logprobs(&raw, token, n)))
    }

    /// Picks the next token from `logits`, given the sequence's tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], prompt_len: usize) -> u32 {
        let dist = self.distribution(logits, history, prompt_len);
        self.draw(&dist)
    }

    /// How many of a row's largest logits this sampler's next draw can depend on, when at most
    /// [`MAX_CANDIDATES`]: top-k plus one for each token a penalty applies to (penalties that only
    /// lower logits — presence and frequency ≥ 0, repeat ≥ 1 — leave the k largest after them among
    /// the `k + m` largest before). `None`: the draw needs the whole row (greedy with penalties, no
    /// top-k, logprobs, a penalty that raises logits, or too many penalised tokens).
    pub fn candidates_needed(&self, history: &[u32], prompt_len: usize) -> Option<usize> {
        let p = &self.params;
        let only_lowers = p.presence_penalty >= 0.0 && p.frequency_penalty >= 0.0 && p.repeat_penalty >= 1.0;
        if p.temperature <= 0.0 || p.logprobs.is_some() || p.top_k == 0 || !only_lowers {
            return None;
        }
        let penalised = self.penalised(history, prompt_len);
        let mut ids: Vec<u32> = penalised.counts.iter().map(|c| c.0).chain(penalised.recent.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        Some(p.top_k + ids.len()).filter(|&n| n <= MAX_CANDIDATES)
    }

    /// [`Self::distribution`] from `candidates`, a row's largest logits with their token ids (at
    /// least [`Self::candidates_needed`] of them, as [`crate::ops::top_k_rows`] returns them): the
    /// same distribution as from the whole row.
    pub fn candidate_distribution(
        &mut self,
        mut candidates: Vec<(u32, f32)>,
        history: &[u32],
        prompt_len: usize,
    ) -> Distribution {
        candidates.sort_unstable_by_key(|c| c.0);
        self.penalised(history, prompt_len).apply(|id, penalise| {
            if let Ok(i) = candidates.binary_search_by_key(&id, |c| c.0) {
                candidates[i].1 = penalise(candidates[i].1);
            }
        });
        self.select(candidates.into_iter())
    }

    /// The distribution the next token is drawn from: penalties, top-k, top-p, min-p and temperature
    /// applied to `logits` (which the penalties modify in place). Greedy is one token of probability 1.
    /// Speculative verification compares the target's and the draft's distributions built by this
    /// same function, so that both see identical processing.
    pub fn distribution(&mut self, logits: &mut [f32], history: &[u32], prompt_len: usize) -> Distribution {
        self.penalised(history, prompt_len).apply(|id, penalise| {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = penalise(*l);
            }
        });
        if self.params.temperature <= 0.0 {
            return Distribution(vec![(argmax(logits), 1.0)]);
        }
        self.select(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)))
    }

    /// The tokens this sampler's penalties apply to, given the sequence so far.
    fn penalised(&self, history: &[u32], prompt_len: usize) -> Penalised {
        let p = &self.params;
        let mut counts = Vec::new();
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut reply: Vec<u32> = history[prompt_len.min(history.len())..].to_vec();
            reply.sort_unstable();
            counts = reply.chunk_by(|a, b| a == b).map(|run| (run[0], run.len())).collect();
        }
        let mut recent = Vec::new();
        if p.repeat_penalty != 1.0 {
            recent = history[history.len().saturating_sub(p.repeat_last_n)..].to_vec();
            recent.sort_unstable();
            recent.dedup();
        }
        Penalised {
            counts,
            recent,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            repeat: p.repeat_penalty,
        }
    }

    /// Top-k, top-p, min-p and temperature over `logits` (token id, penalised logit).
    fn select(&mut self, logits: impl Iterator<Item = (u32, f32)>) -> Distribution {
        let p = &self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits);
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        // Probabilities before temperature decide which tokens survive top-p and min-p.
        let probs = softmax(c.iter().map(|x| x.1), 1.0);
        let mut keep = c.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            keep = probs
                .iter()
                .position(|&q| {
                    cum += q;
                    cum >= p.top_p
                })
                .map_or(keep, |i| i + 1);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        c.truncate(keep);
        let probs = softmax(c.iter().map(|x| x.1), p.temperature);
        Distribution(c.iter().zip(probs).map(|(&(id, _), q)| (id, q)).collect())
    }

    /// Draws a token from `dist` with this sequence's random stream; greedy takes the first token
    /// and leaves the stream untouched.
    pub fn draw(&mut self, dist: &Distribution) -> u32 {
        let tokens = &dist.0;
        if self.params.temperature <= 0.0 {
            return tokens[0].0;
        }
        let mut r: f32 = self.rng.random();
        for &(id, q) in tokens {
            if r < q {
                return id;
            }
            r -= q;
        }
        tokens[tokens.len() - 1].0
    }

    /// A uniform number in [0, 1) from this sequence's random stream (speculative acceptance tests).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }
}

/// The most candidates a sampler asks the device for ([`Sampler::candidates_needed`]): beyond, the
/// whole row comes back (top-k of 40, llama.cpp's default, with up to 216 penalised tokens fits).
pub const MAX_CANDIDATES: usize = 256;

/// The tokens a sampler's penalties lower: presence/frequency counts in the reply, repeat penalty
/// over the recent window (both sorted by id).
struct Penalised {
    counts: Vec<(u32, usize)>,
    recent: Vec<u32>,
    presence: f32,
    frequency: f32,
    repeat: f32,
}

impl Penalised {
    /// Calls `at(id, penalise)` for every penalised token, presence/frequency before repeat (so a
    /// token under both gets them in that order, whatever holds its logit).
    fn apply(&self, mut at: impl FnMut(u32, &dyn Fn(f32) -> f32)) {
        for &(id, count) in &self.counts {
            at(id, &|l| l - (self.presence + self.frequency * count as f32));
        }
        for &id in &self.recent {
            at(id, &|l| if l > 0.0 { l / self.repeat } else { l * self.repeat });
        }
    }
}

/// A next-token distribution: tokens with nonzero probability and their probabilities (summing to
/// 1), likeliest first. Tokens absent have probability 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution(pub Vec<(u32, f32)>);

impl Distribution {
    /// The probability of `token`.
    pub fn prob(&self, token: u32) -> f32 {
        self.0.iter().find(|(id, _)| *id == token).map_or(0.0, |&(_, q)| q)
    }
}

/// Log-softmax of `logits` at `token`, and the `n` likeliest tokens.
pub fn logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let n = n.min(idx.len());
    if n > 0 && n < idx.len() {
        idx.select_nth_unstable_by(n - 1, by_logit);
    }
    idx.truncate(n);
    idx.sort_unstable_by(by_logit);
    TokenLogprobs {
        logprob: logits[token as usize] - lse,
        top: idx.into_iter().map(|i| (i, logits[i as usize] - lse)).collect(),
    }
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, seed: 7, ..SamplingParams::default() }
    }

    #[test]
    fn greedy_only_samplers_pick_the_argmax_of_the_raw_logits() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1009) as f32 * 0.01).collect();
        let greedy = [params(0.0), SamplingParams { top_k: 3, top_p: 0.5, min_p: 0.2, ..params(0.0) }];
        for p in greedy {
            let mut s = Sampler::new(p);
            assert!(s.greedy_only());
            assert_eq!(s.sample(&mut logits.clone(), &[1, 2], 1), argmax(&logits));
        }
        let not_greedy = [
            params(0.7),
            SamplingParams { logprobs: Some(1), ..params(0.0) },
            SamplingParams { repeat_penalty: 1.1, ..params(0.0) },
            SamplingParams { presence_penalty: 0.5, ..params(0.0) },
            SamplingParams { frequency_penalty: 0.5, ..params(0.0) },
        ];
        assert!(not_greedy.into_iter().all(|p| !Sampler::new(p).greedy_only()));
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[], 0), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) });
            (0..20).map(|_| s.sample(&mut logits.clone(), &[], 0)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams { top_k: 1, ..params(5.0) });
        for _ in 0..10 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.5], &[], 0), 1);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(SamplingParams { min_p: 0.5, top_k: 0, top_p: 1.0, ..params(1.0) });
        for _ in 0..50 {
            assert_ne!(s.sample(&mut [5.0, 4.9, 0.0, 0.0], &[], 0), 2);
        }
    }

    #[test]
    fn presence_and_frequency_penalties_count_only_the_reply() {
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.3, ..params(0.0) });
        // Token 1 was generated twice (penalty 0.5 + 0.6), token 0 only appears in the prompt.
        assert_eq!(s.sample(&mut [1.0, 1.8, 0.0], &[0, 1, 1], 1), 0);
        assert_eq!(s.sample(&mut [1.0, 1.8, 0.0], &[0, 1, 1], 3), 1);
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_alternatives() {
        let mut s = Sampler::new(SamplingParams { logprobs: Some(2), ..params(0.0) });
        let (token, lp) = s.sample_with_logprobs(&mut [0.0, 2.0, 1.0], &[], 0);
        let lp = lp.unwrap();
        let lse = (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert_eq!(token, 1);
        assert!((lp.logprob - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_choice() {
        let mut s = Sampler::new(SamplingParams { repeat_penalty: 2.0, ..params(0.0) });
        assert_eq!(s.sample(&mut [1.0, 1.5], &[1], 0), 0);
    }

    /// Logits with ties (values on a coarse grid), for the candidate tests.
    fn coarse_logits(rng: &mut ChaCha8Rng, vocab: usize) -> Vec<f32> {
        (0..vocab).map(|_| (rng.random_range(-40..40) as f32) * 0.25).collect()
    }

    #[test]
    fn sampling_from_the_largest_logits_draws_what_the_whole_row_would() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for case in 0..300 {
            let vocab = [5, 40, 700][case % 3];
            let params = SamplingParams {
                temperature: rng.random_range(0.1..2.0),
                top_k: rng.random_range(1..60),
                top_p: if case % 2 == 0 { 1.0 } else { rng.random_range(0.3..1.0) },
                min_p: if case % 5 == 0 { 0.1 } else { 0.0 },
                repeat_penalty: if case % 3 == 0 { 1.3 } else { 1.0 },
                repeat_last_n: 8,
                presence_penalty: if case % 4 == 0 { 0.7 } else { 0.0 },
                frequency_penalty: if case % 4 == 1 { 0.4 } else { 0.0 },
                seed: case as u64,
                ..SamplingParams::default()
            };
            let (mut whole, mut from_top) = (Sampler::new(params.clone()), Sampler::new(params));
            for step in 0..4 {
                let logits = coarse_logits(&mut rng, vocab);
                // The history holds some of the largest logits' tokens, so that penalties reorder the top.
                let mut by_logit: Vec<u32> = (0..vocab as u32).collect();
                by_logit.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
                let history: Vec<u32> = (0..20).map(|i| by_logit[(i * 3 + step) % vocab]).collect();
                let needed = from_top.candidates_needed(&history, 10).expect("top-k with lowering penalties");
                let candidates = crate::ops::cpu::top_k(&logits, needed + step % 2);
                let want = whole.distribution(&mut logits.clone(), &history, 10);
                let got = from_top.candidate_distribution(candidates, &history, 10);
                assert_eq!(got, want, "case {case}, step {step}");
                assert_eq!(from_top.draw(&got), whole.draw(&want), "case {case}, step {step}");
            }
        }
    }

    #[test]
    fn a_sampler_needs_the_whole_row_unless_top_k_bounds_its_draw() {
        let history = [1, 2, 2, 3];
        let needed = |p: SamplingParams| Sampler::new(p).candidates_needed(&history, 1);
        assert_eq!(needed(params(0.8)), Some(40));
        assert_eq!(needed(SamplingParams { repeat_penalty: 1.1, ..params(0.8) }), Some(43));
        assert_eq!(needed(SamplingParams { presence_penalty: 0.5, ..params(0.8) }), Some(42));
        for whole in [
            params(0.0),
            SamplingParams { top_k: 0, ..params(0.8) },
            SamplingParams { logprobs: Some(1), ..params(0.8) },
            SamplingParams { repeat_penalty: 0.9, ..params(0.8) },
            SamplingParams { presence_penalty: -0.5, ..params(0.8) },
            SamplingParams { frequency_penalty: -0.1, ..params(0.8) },
            SamplingParams { top_k: MAX_CANDIDATES, repeat_penalty: 1.1, ..params(0.8) },
        ] {
            assert_eq!(needed(whole.clone()), None, "{whole:?}");
        }
    }
}
