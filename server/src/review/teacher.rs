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
    /// Tokens the validator's seeded sampler draws too.
    pub seeded: usize,
    pub seeded_share: f64,
    /// Tokens the request's sampling could have drawn.
    pub in_support: usize,
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
    let seeded = scores.iter().filter(|s| s.seeded == s.id).count();
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
        seeded,
        seeded_share: seeded as f64 / n,
        in_support: support.len(),
        support_share: support.len() as f64 / n,
        z,
        mean_logprob_gap: gap / n,
        text_matches,
    }
}

/// `P(X ≤ k)` for `X ~ Binomial(n, p)`: how likely an honest agent that agrees with the
/// validator on each token with probability `p` agrees on `k` or fewer of `n`. Summed in log
/// space, so long completions do not underflow.
pub fn binomial_lower_tail(n: usize, k: usize, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    // ln P(X = 0), then P(X = i + 1) = P(X = i) · (n − i) / (i + 1) · p / q.
    let mut ln_pmf = n as f64 * ln_q;
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        terms.push(ln_pmf);
        ln_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + ln_p - ln_q;
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    (max + sum.ln()).exp().min(1.0)
}

impl LlmThresholds {
    /// `Ok` for a completion honest sampling explains; otherwise which limit it breaks.
    ///
    /// The counts are judged by how likely honest sampling is to fall that low: an honest
    /// agent draws the validator's seeded token with probability at least
    /// `honest_seeded_rate` per token (less than 1 across precisions and thread counts) and
    /// stays inside the sampling's support with at least `honest_support_rate`. A completion
    /// fails only when honest sampling would agree this little with probability below
    /// `false_alarm`, so short completions are never failed on a few unlucky tokens, and
    /// long ones need only a modest shortfall.
    pub fn judge(&self, score: &LlmScore) -> Result<(), String> {
        if score.tokens == 0 {
            return Err("the validator scored no tokens".to_owned());
        }
        if !score.text_matches {
            return Err("the token ids do not decode to the text returned".to_owned());
        }
        let support_p =
            binomial_lower_tail(score.tokens, score.in_support, self.honest_support_rate);
        if support_p < self.false_alarm {
            return Err(format!(
                "{} of {} tokens are ones the request's sampling could not draw; honest \
                 sampling does that with probability {support_p:.1e} (below {:.0e})",
                score.tokens - score.in_support,
                score.tokens,
                self.false_alarm
            ));
        }
        let seeded_p = binomial_lower_tail(score.tokens, score.seeded, self.honest_seeded_rate);
        if seeded_p < self.false_alarm {
            return Err(format!(
                "the validator's seeded sampler draws {} of {} tokens ({:.0}%); honest \
                 sampling agrees this little with probability {seeded_p:.1e} (below {:.0e})",
                score.seeded,
                score.tokens,
                score.seeded_share * 100.0,
                self.false_alarm
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
        assert!(refused.contains("20 of 40 tokens"), "{refused}");

        let in_support_but_not_drawn: Vec<TokenScore> =
            (0..40).map(|i| token(i, i + 1, true, -3.0)).collect();
        let refused = limits
            .judge(&score(&in_support_but_not_drawn, true))
            .expect_err("other model");
        assert!(refused.contains("draws 0 of 40 tokens"), "{refused}");
    }

    #[test]
    fn the_binomial_tail_matches_small_cases_and_survives_long_completions() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.max(1e-300);
        assert!(close(binomial_lower_tail(3, 0, 0.5), 0.125));
        assert!(close(binomial_lower_tail(3, 1, 0.5), 0.5));
        assert!(close(binomial_lower_tail(4, 2, 0.25), 243.0 / 256.0));
        assert_eq!(binomial_lower_tail(5, 5, 0.9), 1.0);
        let tiny = binomial_lower_tail(4096, 10, 0.75);
        assert!(tiny > 0.0 && tiny < 1e-300 || tiny == 0.0);
        let half = binomial_lower_tail(4096, 3072, 0.75);
        assert!((half - 0.5).abs() < 0.02, "{half}");
    }

    #[test]
    fn a_short_unlucky_honest_completion_passes_where_a_long_shortfall_fails() {
        let limits = LlmThresholds::default();
        // 7 of 12 seeded: unlucky for an agent at bf16, not damning.
        let short: Vec<TokenScore> = (0..12)
            .map(|i| token(i, if i < 7 { i } else { 99 }, true, -2.0))
            .collect();
        assert_eq!(limits.judge(&score(&short, true)), Ok(()));
        // None of 12 seeded: honest sampling almost never does that.
        let wrong: Vec<TokenScore> = (0..12).map(|i| token(i, 99, true, -2.0)).collect();
        assert!(limits.judge(&score(&wrong, true)).is_err());
        // A smaller share than honest agents reach, over 400 tokens: no honest agent does that.
        let long: Vec<TokenScore> = (0..400)
            .map(|i| token(i, if i % 5 < 2 { i } else { 99_999 }, true, -2.0))
            .collect();
        assert!(limits.judge(&score(&long, true)).is_err());
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
