//! Judging an LLM completion from a validator's teacher-forced scores.
//!
//! The validator runs the prompt and the miner's tokens through the model once and reports,
//! per token, its probability under the request's sampling settings and the token its own
//! seeded sampler draws there ([`TokenScore`]). An honest miner sampled from (nearly) the
//! same distribution with the same seeded draws, so nearly every token is one the validator
//! also draws, and every token is one the sampling could have produced. Canned text and
//! another model's output agree with the validator's draws about as often as chance allows.
//! The z-score compares the completion's log-probability with what honest draws score on
//! average (about 0 for honest sampling, far below for text the model would not write).

use infermine_protocol::TokenScore;
use serde::Serialize;

use super::config::LlmThresholds;

/// Figures of one scored completion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LlmScore {
    pub tokens: usize,
    /// Share of tokens the validator's seeded sampler draws too.
    pub seeded_share: f64,
    /// Share of tokens the request's sampling could have drawn.
    pub support_share: f64,
    /// `Σ (log q − E[log q]) / √Σ Var[log q]` over the tokens in support.
    pub z: f64,
    /// Mean of `E[log q] − log q` over all tokens: how much less likely than an honest draw
    /// the completion's tokens are, in nats per token.
    pub mean_logprob_gap: f64,
    /// Whether the tokens decode to the text the miner returned.
    pub text_matches: bool,
}

/// The figures of a validator's scores.
pub fn score(scores: &[TokenScore], text_matches: bool) -> LlmScore {
    let n = scores.len().max(1) as f64;
    let seeded = scores.iter().filter(|s| s.seeded == s.id).count() as f64;
    let support: Vec<&TokenScore> = scores.iter().filter(|s| s.in_support).collect();
    let deviation: f64 = support
        .iter()
        .map(|s| f64::from(s.sample_logprob) - f64::from(s.expected_logprob))
        .sum();
    let variance: f64 = support
        .iter()
        .map(|s| f64::from(s.logprob_variance).max(0.0))
        .sum();
    let z = if variance > 0.0 {
        deviation / variance.sqrt()
    } else {
        0.0
    };
    let gap: f64 = scores
        .iter()
        .map(|s| f64::from(s.expected_logprob) - f64::from(s.sample_logprob))
        .sum();
    LlmScore {
        tokens: scores.len(),
        seeded_share: seeded / n,
        support_share: support.len() as f64 / n,
        z,
        mean_logprob_gap: gap / n,
        text_matches,
    }
}

impl LlmThresholds {
    /// `Ok` for a completion honest sampling explains; otherwise which limit it breaks.
    pub fn judge(&self, score: &LlmScore) -> Result<(), String> {
        if score.tokens == 0 {
            return Err("the validator scored no tokens".to_owned());
        }
        if !score.text_matches {
            return Err("the token ids do not decode to the text returned".to_owned());
        }
        if score.support_share < self.min_support_share {
            return Err(format!(
                "{:.0}% of the tokens are ones the request's sampling could not draw \
                 (at most {:.0}% allowed)",
                (1.0 - score.support_share) * 100.0,
                (1.0 - self.min_support_share) * 100.0
            ));
        }
        if score.seeded_share < self.min_seeded_share {
            return Err(format!(
                "the validator's seeded sampler draws {:.0}% of the tokens (at least {:.0}% \
                 expected of honest sampling)",
                score.seeded_share * 100.0,
                self.min_seeded_share * 100.0
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u32, seeded: u32, in_support: bool, logq: f32) -> TokenScore {
        TokenScore {
            id,
            logprob: logq,
            rank: 0,
            in_support,
            sample_logprob: if in_support {
                logq
            } else {
                TokenScore::LOGPROB_FLOOR
            },
            expected_logprob: -2.0,
            logprob_variance: 1.0,
            seeded,
        }
    }

    #[test]
    fn honest_sampling_passes_and_canned_text_fails() {
        let limits = LlmThresholds::default();
        let honest: Vec<TokenScore> = (0..40)
            .map(|i| {
                token(
                    i,
                    if i == 7 { 99 } else { i },
                    true,
                    -2.0 + (i % 3) as f32 - 1.0,
                )
            })
            .collect();
        let s = score(&honest, true);
        assert_eq!(s.tokens, 40);
        assert!((s.seeded_share - 39.0 / 40.0).abs() < 1e-9);
        assert_eq!(s.support_share, 1.0);
        assert!(s.z.abs() < 2.0, "{s:?}");
        assert_eq!(limits.judge(&s), Ok(()));

        let canned: Vec<TokenScore> = (0..40).map(|i| token(i, i + 1, i % 2 == 0, -9.0)).collect();
        let s = score(&canned, true);
        assert!(s.z < -20.0 && s.mean_logprob_gap > 5.0, "{s:?}");
        let refused = limits.judge(&s).expect_err("canned text");
        assert!(refused.contains("could not draw"), "{refused}");

        let in_support_but_not_drawn: Vec<TokenScore> =
            (0..40).map(|i| token(i, i + 1, true, -3.0)).collect();
        let refused = limits
            .judge(&score(&in_support_but_not_drawn, true))
            .expect_err("other model");
        assert!(refused.contains("seeded sampler draws 0%"), "{refused}");
    }

    #[test]
    fn text_that_the_tokens_do_not_spell_fails_and_nothing_scored_fails() {
        let limits = LlmThresholds::default();
        let tokens = vec![token(1, 1, true, -1.0)];
        assert!(
            limits
                .judge(&score(&tokens, false))
                .expect_err("text")
                .contains("decode")
        );
        assert!(limits.judge(&score(&[], true)).is_err());
    }
}
