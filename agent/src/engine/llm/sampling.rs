//! Choosing the next token from the model's logits.
//!
//! [`Sampler`] is reproducible: the same logits, parameters and seed give the same tokens on
//! any machine (a `ChaCha8Rng` seeded from the request's seed, one draw per sampled token,
//! candidates ordered by logit then id, arithmetic in `f64` with a fixed summation order and
//! an `exp` of its own instead of the C library's). The distribution a token is drawn from
//! ([`Support`]) is also what review scores a completion against, so temperature, top-k and
//! top-p have one implementation for both.

use infermine_protocol::LlmParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Temperatures below this are greedy decoding.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// Why no token could be chosen: the logits are unusable, which means the model's numerics
/// broke down (or the caller passed the wrong buffer).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// The logits are empty.
    #[error("the model produced no logits: check that the vocabulary size is not zero")]
    Empty,
    /// A logit is NaN or +infinity.
    #[error(
        "the model produced a logit of {value} for token {index}: its numerics overflowed; \
         check the weights and the dtype (fp16 overflows where bf16 does not)"
    )]
    NotFinite {
        /// The first token whose logit is unusable.
        index: usize,
        /// That logit.
        value: f32,
    },
    /// Every logit is -infinity, so no token has any probability.
    #[error("every logit is -inf, so no token can be chosen: the logits were masked entirely")]
    AllMasked,
}

/// Picks tokens from logits with the request's temperature, top-k, top-p and seed.
#[derive(Clone)]
pub struct Sampler {
    filter: Filter,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("temperature", &self.filter.temperature)
            .field("top_p", &self.filter.top_p)
            .field("top_k", &self.filter.top_k)
            .finish_non_exhaustive()
    }
}

/// The request's temperature, top-k and top-p, and the buffers that turn one row of logits
/// into the distribution they define.
#[derive(Clone)]
struct Filter {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    /// Per-token buffers kept between calls (a vocabulary's worth: allocating them anew for
    /// every token costs page faults).
    weights: Vec<f64>,
    candidates: Vec<Candidate>,
}

/// One candidate token: its id and its logit.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Highest logit first; equal logits by lowest id. A total order, so selections and sorts
/// come out the same everywhere.
fn by_rank(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// The rank of token `id` in `logits` under the sampler's order (highest logit first, equal
/// logits by lowest id): 0 for the token greedy decoding takes.
///
/// # Panics
/// When `id` is not an index of `logits`.
pub fn token_rank(logits: &[f32], id: u32) -> u32 {
    let me = Candidate {
        id,
        logit: logits[id as usize],
    };
    let ahead = logits
        .iter()
        .zip(0u32..)
        .filter(|&(&logit, other)| by_rank(&Candidate { id: other, logit }, &me).is_lt())
        .count();
    u32::try_from(ahead).unwrap_or(u32::MAX)
}

/// The distribution of one token under a request's sampling settings, for one row of
/// logits: the tokens temperature, top-k and top-p leave, with their weights.
#[derive(Debug, Clone, Copy)]
pub struct Support<'a>(Repr<'a>);

#[derive(Debug, Clone, Copy)]
enum Repr<'a> {
    /// Greedy decoding: this token, without a draw.
    Point(u32),
    /// Every token, `weights` by id (0 for those without a chance); `total` is their sum.
    All { weights: &'a [f64], total: f64 },
    /// The best tokens in rank order; a token's weight is `weights[id]` when `by_id`, else
    /// `weights[rank]`; `total` is their sum in rank order.
    Ranked {
        kept: &'a [Candidate],
        weights: &'a [f64],
        by_id: bool,
        total: f64,
    },
}

impl<'a> Support<'a> {
    /// The token greedy decoding takes, when this is greedy decoding (certain, no draw).
    pub fn point(&self) -> Option<u32> {
        match self.0 {
            Repr::Point(id) => Some(id),
            _ => None,
        }
    }

    /// Every token that can be drawn, with its probability (positive; they sum to one up to
    /// rounding).
    pub fn tokens(&self) -> Box<dyn Iterator<Item = (u32, f64)> + 'a> {
        match self.0 {
            Repr::Point(id) => Box::new(std::iter::once((id, 1.0))),
            Repr::All { weights, total } => Box::new(
                weights
                    .iter()
                    .zip(0u32..)
                    .filter(|&(&w, _)| w > 0.0)
                    .map(move |(&w, id)| (id, w / total)),
            ),
            Repr::Ranked {
                kept,
                weights,
                by_id,
                total,
            } => Box::new(
                ranked(kept, weights, by_id)
                    .filter(|&(_, w)| w > 0.0)
                    .map(move |(id, w)| (id, w / total)),
            ),
        }
    }

    /// The probability of drawing token `id` (0 for tokens outside the support).
    pub fn probability(&self, id: u32) -> f64 {
        match self.0 {
            Repr::Point(point) => f64::from(u8::from(point == id)),
            Repr::All { weights, total } => weights.get(id as usize).map_or(0.0, |&w| w / total),
            Repr::Ranked {
                kept,
                weights,
                by_id,
                total,
            } => ranked(kept, weights, by_id)
                .find(|&(candidate, _)| candidate == id)
                .map_or(0.0, |(_, w)| w / total),
        }
    }

    /// Draws a token with one draw from `rng`; greedy decoding draws nothing.
    fn draw(&self, rng: &mut ChaCha8Rng) -> u32 {
        match self.0 {
            Repr::Point(id) => id,
            Repr::All { weights, total } => {
                // Every token, in id order: no sort at all.
                let target = rng.random::<f64>() * total;
                u32::try_from(find_by_id(weights, target)).unwrap_or(u32::MAX)
            }
            Repr::Ranked {
                kept,
                weights,
                by_id,
                total,
            } => draw(rng, ranked(kept, weights, by_id), total),
        }
    }
}

/// `(id, weight)` of ranked candidates: weights by id, or parallel to the candidates.
fn ranked<'a>(
    kept: &'a [Candidate],
    weights: &'a [f64],
    by_id: bool,
) -> impl Iterator<Item = (u32, f64)> + 'a {
    kept.iter().enumerate().map(move |(rank, c)| {
        let w = if by_id {
            weights[c.id as usize]
        } else {
            weights[rank]
        };
        (c.id, w)
    })
}

impl Sampler {
    /// A sampler for a request's `temperature`, `top_p`, `top_k` and `seed`.
    pub fn new(params: &LlmParams) -> Self {
        Self::with(params.temperature, params.top_p, params.top_k, params.seed)
    }

    /// A sampler from the parameters themselves: `temperature` below
    /// [`GREEDY_TEMPERATURE`] (or NaN) is greedy, `top_k` 0 and `top_p` ≥ 1 (or NaN) are
    /// off.
    pub fn with(temperature: f32, top_p: f32, top_k: u32, seed: u64) -> Self {
        Self {
            filter: Filter {
                temperature,
                top_p,
                top_k,
                weights: Vec::new(),
                candidates: Vec::new(),
            },
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Whether this sampler always takes the most likely token (and draws nothing).
    pub fn is_greedy(&self) -> bool {
        self.filter.is_greedy()
    }

    /// The next token for these logits (one per vocabulary entry). Greedy decoding takes the
    /// largest logit (the lowest id among equals); otherwise the logits are divided by the
    /// temperature, cut to the `top_k` best, turned into probabilities (in `f64`), cut to
    /// the smallest set of best tokens holding `top_p` of the probability, and one token is
    /// drawn from what is left with one draw from the seeded generator (greedy decoding
    /// draws nothing).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SampleError> {
        self.sample_with_support(logits).map(|(id, _)| id)
    }

    /// [`Self::sample`], also returning the distribution the token was drawn from. Advances
    /// the generator exactly as `sample` does, so replaying a completion's rows through one
    /// sampler reproduces the draws that made it.
    pub fn sample_with_support(
        &mut self,
        logits: &[f32],
    ) -> Result<(u32, Support<'_>), SampleError> {
        let Self { filter, rng } = self;
        let support = filter.support(logits)?;
        Ok((support.draw(rng), support))
    }
}

impl Filter {
    fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature < GREEDY_TEMPERATURE
    }

    /// The distribution these settings give `logits`.
    fn support(&mut self, logits: &[f32]) -> Result<Support<'_>, SampleError> {
        let max = check(logits)?;
        if self.is_greedy() || self.top_k == 1 {
            return Ok(Support(Repr::Point(argmax(logits, max))));
        }
        let inv_t = 1.0 / f64::from(self.temperature);
        let max = f64::from(max);
        // -inf logits (masked tokens) get weight 0.
        let weight = |logit: f32| exp_nonpositive((f64::from(logit) - max) * inv_t);
        let top_p = f64::from(self.top_p);
        let nucleus = top_p < 1.0; // false for NaN: off

        let n = logits.len();
        let k = usize::try_from(self.top_k).unwrap_or(usize::MAX);
        let Self {
            weights,
            candidates,
            ..
        } = self;
        if k == 0 || k >= n {
            // One exp per token, kept by id.
            weights.clear();
            weights.resize(n, 0.0);
            for (w, &l) in weights.iter_mut().zip(logits) {
                *w = weight(l);
            }
            let total = total_weight(weights);
            if !nucleus {
                return Ok(Support(Repr::All { weights, total }));
            }
            let keep = nucleus_prefix(logits, weights, candidates, total * top_p);
            let kept = &candidates[..keep];
            return Ok(Support(Repr::Ranked {
                kept,
                weights,
                by_id: true,
                total: ranked(kept, weights, true).map(|(_, w)| w).sum(),
            }));
        }

        // Top-k: select the k best in O(n), then order only those.
        fill_candidates(candidates, logits);
        candidates.select_nth_unstable_by(k - 1, by_rank);
        candidates.truncate(k);
        candidates.sort_unstable_by(by_rank);
        weights.clear();
        weights.extend(candidates.iter().map(|c| weight(c.logit)));
        let total: f64 = weights.iter().sum();
        let keep = if nucleus {
            nucleus_len(weights, total * top_p)
        } else {
            weights.len()
        };
        Ok(Support(Repr::Ranked {
            kept: &candidates[..keep],
            weights: &weights[..keep],
            by_id: false,
            total: weights[..keep].iter().sum(),
        }))
    }
}

/// Top-p over the whole vocabulary (`weights` by id): orders the best tokens in growing
/// chunks (each selected in O(n), then sorted) until they hold `target` of the weight, so a
/// full sort happens only for flat distributions. Returns how many lead `candidates`, in
/// rank order.
fn nucleus_prefix(
    logits: &[f32],
    weights: &[f64],
    candidates: &mut Vec<Candidate>,
    target: f64,
) -> usize {
    let weight_of = |c: &Candidate| weights[c.id as usize];
    fill_candidates(candidates, logits);
    let n = candidates.len();
    // candidates[..sorted] are the best `sorted` tokens, in rank order.
    let mut sorted = 0;
    let mut cum = 0.0;
    let mut end = 64.min(n);
    loop {
        let chunk = end - sorted;
        let rest = &mut candidates[sorted..];
        if chunk < rest.len() {
            rest.select_nth_unstable_by(chunk - 1, by_rank);
        }
        rest[..chunk].sort_unstable_by(by_rank);
        for (i, c) in candidates.iter().enumerate().take(end).skip(sorted) {
            cum += weight_of(c);
            if cum >= target || i + 1 == n {
                return i + 1;
            }
        }
        sorted = end;
        end = (end * 4).min(n);
    }
}

/// Weights are summed in chunks of this many, each with four running sums: a fixed order
/// (so the same result everywhere) that does not wait on one long chain of additions.
const CHUNK: usize = 256;

fn chunk_sum(chunk: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut quads = chunk.chunks_exact(4);
    for q in &mut quads {
        for (a, &w) in acc.iter_mut().zip(q) {
            *a += w;
        }
    }
    let tail: f64 = quads.remainder().iter().sum();
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + tail
}

/// The sum of `weights`, chunk by chunk in id order.
fn total_weight(weights: &[f64]) -> f64 {
    weights.chunks(CHUNK).map(chunk_sum).sum()
}

/// The id where the running sum of `weights` (by id, chunk sums as in [`total_weight`]) first
/// exceeds `target`; the last id with any weight when rounding leaves `target` at the top.
fn find_by_id(weights: &[f64], target: f64) -> usize {
    let mut cum = 0.0;
    for (c, chunk) in weights.chunks(CHUNK).enumerate() {
        let s = chunk_sum(chunk);
        if cum + s > target {
            for (j, &w) in chunk.iter().enumerate() {
                cum += w;
                if w > 0.0 && cum > target {
                    return c * CHUNK + j;
                }
            }
        } else {
            cum += s;
        }
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// Draws one of `candidates` (weights not all zero, summing to `total`) in proportion to its
/// weight, with one draw.
fn draw(rng: &mut ChaCha8Rng, candidates: impl Iterator<Item = (u32, f64)>, total: f64) -> u32 {
    let target = rng.random::<f64>() * total;
    let mut cum = 0.0;
    let mut last = None;
    for (id, w) in candidates {
        if w > 0.0 {
            last = Some(id);
            cum += w;
            if cum > target {
                return id;
            }
        }
    }
    // Rounding left `target` at the very top: the last token with any weight.
    last.unwrap_or(0)
}

/// The number of leading (highest-first) weights whose sum first reaches `target`; at least
/// one, at most all.
fn nucleus_len(weights: &[f64], target: f64) -> usize {
    let mut cum = 0.0;
    for (i, &w) in weights.iter().enumerate() {
        cum += w;
        if cum >= target {
            return i + 1;
        }
    }
    weights.len()
}

fn fill_candidates(candidates: &mut Vec<Candidate>, logits: &[f32]) {
    candidates.clear();
    candidates.extend(
        logits
            .iter()
            .zip(0u32..)
            .map(|(&logit, id)| Candidate { id, logit }),
    );
}

/// Checks the logits are usable and returns the largest.
fn check(logits: &[f32]) -> Result<f32, SampleError> {
    if logits.is_empty() {
        return Err(SampleError::Empty);
    }
    let mut max = f32::NEG_INFINITY;
    for (index, &value) in logits.iter().enumerate() {
        if value.is_nan() || value == f32::INFINITY {
            return Err(SampleError::NotFinite { index, value });
        }
        if value > max {
            max = value;
        }
    }
    if max == f32::NEG_INFINITY {
        return Err(SampleError::AllMasked);
    }
    Ok(max)
}

/// The lowest id holding the largest logit.
fn argmax(logits: &[f32], max: f32) -> u32 {
    logits
        .iter()
        .position(|&l| l == max)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// `e^x` for `x <= 0` (a positive `x` counts as 0; below -708, where `e^x` leaves the normal
/// range, the result is 0), in plain IEEE arithmetic: the same bits on every
/// machine, unlike the platform's libm `exp`, whose last bit differs between C libraries.
/// Accurate to about one ulp: Cody–Waite reduction to `r` in [-ln2/2, ln2/2], a degree-13
/// Taylor polynomial, then scaling by `2^k`. Branch-free, so loops over it vectorize.
fn exp_nonpositive(x: f64) -> f64 {
    // ln 2 split as in fdlibm: the high part has zeros in its low bits, so k * LN2_HI is
    // exact.
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    const LOWEST: f64 = -708.0;
    // Adding 1.5 * 2^52 rounds to an integer (ties to even) held in the low mantissa bits;
    // `f64::round` would be a libm call on baseline x86-64.
    const ROUNDER: f64 = 6_755_399_441_055_744.0;
    const INV_FACTORIAL: [f64; 14] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let xc = x.clamp(LOWEST, 0.0); // NaN stays NaN
    let t = xc * std::f64::consts::LOG2_E + ROUNDER;
    let k = t - ROUNDER; // in [-1021, 0]
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let mut p = INV_FACTORIAL[13];
    for &c in INV_FACTORIAL[..13].iter().rev() {
        p = p * r + c;
    }
    // 2^k: the low bits of `t` hold k; move k + 1023 into the exponent field.
    let scale = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
    let y = p * scale;
    if x < LOWEST { 0.0 } else { y }
}

/// The natural-log probability of token `id` under `softmax(logits)` (temperature 1),
/// computed in `f64`. NaN when `id` is out of range or a logit is NaN.
pub fn token_logprob(logits: &[f32], id: u32) -> f32 {
    let Some(&logit) = usize::try_from(id).ok().and_then(|i| logits.get(i)) else {
        return f32::NAN;
    };
    let mut max = f32::NEG_INFINITY;
    for &l in logits {
        if l.is_nan() {
            return f32::NAN;
        }
        max = max.max(l);
    }
    if max.is_infinite() {
        return f32::NAN;
    }
    let max = f64::from(max);
    let mut buf = [0.0f64; CHUNK];
    let mut sum = 0.0;
    for chunk in logits.chunks(CHUNK) {
        for (b, &l) in buf.iter_mut().zip(chunk) {
            *b = exp_nonpositive(f64::from(l) - max);
        }
        sum += chunk_sum(&buf[..chunk.len()]);
    }
    (f64::from(logit) - max - sum.ln()) as f32
}

#[cfg(test)]
mod tests;
