//! Review by teacher forcing: a trusted validator runs another agent's completion through its
//! own copy of the model and reports, token by token, how the model and the request's
//! sampling settings rate it ([`TokenScore`]).
//!
//! The prompt is encoded as generation encodes it, prefilled, then the completion's ids are
//! fed in chunks through the same KV cache, so every row of logits is the one the miner sampled
//! from (up to numerical noise between devices and dtypes). Each row is scored against the
//! request's sampling distribution through the very [`Sampler`] code generation uses, and one
//! sampler seeded like the miner's is stepped once per row: an honest completion is, token for
//! token, what that sampler draws (`seeded == id`), and its log-probabilities look like draws
//! from their own distributions (their sum sits near its expectation, in units of its spread).

use infermine_protocol::{JobOutput, LlmParams, LlmScoreParams, TokenScore};

use super::engine::LlmEngine;
use super::sampling::{SampleError, Sampler, token_logprob, token_rank};
use super::text::completion_text;
use crate::engine::{CancelToken, EngineError, catch_torch_panic};

/// How near (relative to the largest logit's magnitude, or to 1 when that is smaller) a token's
/// logit must be to the largest for greedy decoding to count it as the best. Another device or
/// dtype swaps near-ties: bf16 keeps 8 significant bits, so each rounding of a logit moves it
/// by up to 2^-8 of its size, and the miner's and the validator's roundings add up (an f32
/// validator saw honest bf16 greedy tokens one bf16 step, 0.64%, below the best).
pub const GREEDY_TIE_TOLERANCE: f32 = 2e-2;

/// Completion tokens run through the model per forward pass: bounds the logits held at once
/// (`[chunk, vocab]` in f32) and how long a cancellation waits.
const CHUNK: usize = 128;

/// A validator's scores of a completion ([`LlmEngine::score`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredCompletion {
    /// One per completion token, in order.
    pub scores: Vec<TokenScore>,
    /// Tokens of the request's prompt under this model's chat template.
    pub prompt_tokens: u32,
    /// Whether the ids decode (end of sequence and stop strings applied) to the text returned.
    pub text_matches: bool,
}

impl From<ScoredCompletion> for JobOutput {
    fn from(scored: ScoredCompletion) -> Self {
        Self::TokenScores {
            scores: scored.scores,
            prompt_tokens: scored.prompt_tokens,
            text_matches: scored.text_matches,
        }
    }
}

impl LlmEngine {
    /// Scores a completion of `params.request` made of `params.token_ids` (see the module
    /// docs). Refuses an empty completion, ids outside the model's vocabulary, and a prompt and
    /// completion longer than the model's context.
    pub fn score(
        &self,
        params: &LlmScoreParams,
        cancel: &CancelToken,
    ) -> Result<ScoredCompletion, EngineError> {
        let prompt = self.encode_prompt(&params.request)?;
        self.check_completion(&params.token_ids, prompt.len())?;
        // Ids that do not even decode cannot have produced any text.
        let text_matches =
            completion_text(self.tokenizer(), &params.token_ids, &params.request.stop)
                .is_ok_and(|text| text == params.text);
        let _no_grad = tch::no_grad_guard();
        let scores = catch_torch_panic("scoring a completion", || {
            self.teacher_force(&params.request, &prompt, &params.token_ids, cancel)
        })??;
        Ok(ScoredCompletion {
            scores,
            prompt_tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
            text_matches,
        })
    }

    fn check_completion(&self, ids: &[u32], prompt_len: usize) -> Result<(), EngineError> {
        let vocab = self.model().config().vocab_size;
        let context = self.model().max_positions();
        if ids.is_empty() {
            return Err(EngineError::InvalidParams(
                "token_ids is empty: there is no completion to score".to_owned(),
            ));
        }
        if let Some((at, id)) = ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= vocab)
        {
            return Err(EngineError::InvalidParams(format!(
                "token id {id} (position {at}) is outside the model's vocabulary of {vocab} \
                 tokens: the completion is not from this model"
            )));
        }
        if prompt_len + ids.len() > context {
            return Err(EngineError::InvalidParams(format!(
                "the prompt ({prompt_len} tokens) and the completion ({} tokens) exceed the \
                 model's context of {context} tokens",
                ids.len()
            )));
        }
        Ok(())
    }

    /// Prefills `prompt`, then feeds `ids` but the last in chunks; scores each id against the
    /// row that predicts it.
    fn teacher_force(
        &self,
        request: &LlmParams,
        prompt: &[u32],
        ids: &[u32],
        cancel: &CancelToken,
    ) -> Result<Vec<TokenScore>, EngineError> {
        let model = self.model();
        let vocab = model.config().vocab_size;
        let mut cache = model.new_cache(prompt.len() + ids.len() - 1);
        let mut sampler = Sampler::new(request);
        let mut scores = Vec::with_capacity(ids.len());
        let mut logits = model.forward(prompt, &mut cache, false);
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let rows = Vec::<f32>::try_from(logits.flatten(0, -1))
                .map_err(|e| EngineError::Transient(format!("reading logits: {e}")))?;
            for row in rows.chunks_exact(vocab) {
                let id = ids[scores.len()];
                let score = score_token(&mut sampler, row, id)
                    .map_err(|e| EngineError::Transient(e.to_string()))?;
                scores.push(score);
            }
            let next = scores.len();
            if next == ids.len() {
                return Ok(scores);
            }
            // Row j of this pass predicts ids[next + j] from ids[next - 1 + j].
            let end = (next - 1 + CHUNK).min(ids.len() - 1);
            logits = model.forward(&ids[next - 1..end], &mut cache, true);
        }
    }
}

/// How token `id` fares in one row of `logits` under `sampler`'s settings; also steps the
/// sampler once (one draw, none for greedy decoding), as generation does per token, and
/// reports what it drew.
pub(crate) fn score_token(
    sampler: &mut Sampler,
    logits: &[f32],
    id: u32,
) -> Result<TokenScore, SampleError> {
    let (seeded, support) = sampler.sample_with_support(logits)?;
    let floor = |logprob: f64| (logprob as f32).max(TokenScore::LOGPROB_FLOOR);
    let (in_support, sample_logprob, expected_logprob, logprob_variance) = match support.point() {
        Some(_) => {
            let best = near_best(logits, id);
            let logprob = if best { 0.0 } else { TokenScore::LOGPROB_FLOOR };
            (best, logprob, 0.0, 0.0)
        }
        None => {
            let q = support.probability(id);
            // Two passes: the variance as E[(log q - mean)²] does not cancel like
            // E[(log q)²] - mean² would.
            let mean: f64 = support.tokens().map(|(_, p)| p * p.ln()).sum();
            let variance: f64 = support
                .tokens()
                .map(|(_, p)| p * (p.ln() - mean).powi(2))
                .sum();
            (q > 0.0, floor(q.ln()), mean as f32, variance as f32)
        }
    };
    Ok(TokenScore {
        id,
        logprob: token_logprob(logits, id).max(TokenScore::LOGPROB_FLOOR),
        rank: token_rank(logits, id),
        in_support,
        sample_logprob,
        expected_logprob,
        logprob_variance,
        seeded,
    })
}

/// Whether the logit of `id` is within [`GREEDY_TIE_TOLERANCE`] of the largest.
fn near_best(logits: &[f32], id: u32) -> bool {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let logit = logits[id as usize];
    max - logit <= GREEDY_TIE_TOLERANCE * max.abs().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(sampler: &mut Sampler, logits: &[f32], ids: &[u32]) -> Vec<TokenScore> {
        ids.iter()
            .map(|&id| score_token(sampler, logits, id).expect("finite logits"))
            .collect()
    }

    #[test]
    fn a_token_is_scored_against_the_sampling_distribution() {
        // softmax = [1/6, 2/6, 3/6]; top_k 2 keeps tokens 2 and 1 as q = [0, 2/5, 3/5].
        let l = [0.0f32, 2f32.ln(), 3f32.ln()];
        let mut sampler = Sampler::with(1.0, 1.0, 2, 5);
        let [low, mid, top] = scores(&mut sampler, &l, &[0, 1, 2])[..] else {
            panic!("three scores")
        };
        assert!((mid.logprob - (1.0f32 / 3.0).ln()).abs() < 1e-6);
        assert_eq!((top.rank, mid.rank, low.rank), (0, 1, 2));
        assert!(!low.in_support && mid.in_support && top.in_support);
        assert_eq!(low.sample_logprob, TokenScore::LOGPROB_FLOOR);
        assert!((mid.sample_logprob - 0.4f32.ln()).abs() < 1e-6);
        let (q1, q2) = (0.4f64, 0.6f64);
        let mean = q1 * q1.ln() + q2 * q2.ln();
        let var = q1 * q1.ln().powi(2) + q2 * q2.ln().powi(2) - mean * mean;
        assert!((f64::from(top.expected_logprob) - mean).abs() < 1e-6);
        assert!((f64::from(top.logprob_variance) - var).abs() < 1e-6);
        assert!(low.logprob < mid.logprob);
    }

    #[test]
    fn seeded_replays_the_generators_draws() {
        // Every path of the sampler: one scorer stepped per row draws what sample() draws.
        let rows: Vec<Vec<f32>> = (0..40u32)
            .map(|r| {
                (0..300u32)
                    .map(|i| ((i * 7919 + r * 104_729) % 1000) as f32 / 100.0)
                    .collect()
            })
            .collect();
        for (t, p, k) in [
            (1.0, 1.0, 0),
            (0.8, 1.0, 40),
            (1.0, 0.9, 0),
            (0.7, 0.95, 50),
        ] {
            let mut generator = Sampler::with(t, p, k, 11);
            let mut scorer = Sampler::with(t, p, k, 11);
            for row in &rows {
                let id = generator.sample(row).expect("finite");
                let score = score_token(&mut scorer, row, id).expect("finite");
                assert_eq!(score.seeded, id, "t={t} p={p} k={k}");
                assert!(score.in_support);
            }
        }
    }

    #[test]
    fn greedy_allows_near_ties_only() {
        let mut sampler = Sampler::with(0.0, 1.0, 0, 1);
        let l = [10.0f32, 9.85, 9.0];
        let [best, tie, far] = scores(&mut sampler, &l, &[0, 1, 2])[..] else {
            panic!("three scores")
        };
        assert!(best.in_support && tie.in_support && !far.in_support);
        assert_eq!((best.seeded, tie.seeded, far.seeded), (0, 0, 0));
        assert_eq!((tie.sample_logprob, tie.expected_logprob), (0.0, 0.0));
        assert_eq!(far.sample_logprob, TokenScore::LOGPROB_FLOOR);
        assert_eq!(tie.rank, 1);
    }

    #[test]
    fn ranks_break_ties_by_id_like_the_sampler() {
        let l = [1.0f32, 3.0, 3.0, f32::NEG_INFINITY];
        let ranks: Vec<u32> = (0..4).map(|id| token_rank(&l, id)).collect();
        assert_eq!(ranks, [2, 0, 1, 3]);
        let mut sampler = Sampler::with(1.0, 1.0, 0, 1);
        let masked = score_token(&mut sampler, &l, 3).expect("finite");
        assert_eq!(masked.logprob, TokenScore::LOGPROB_FLOOR);
        assert!(!masked.in_support);
    }
}
