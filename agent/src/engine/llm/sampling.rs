//! Choosing the next token from the model's logits, and stopping at stop strings.
//!
//! [`Sampler`] is reproducible: the same logits, parameters and seed give the same tokens on
//! any machine (a `ChaCha8Rng` seeded from the request's seed, one draw per sampled token,
//! candidates ordered by logit then id, arithmetic in `f64` with a fixed summation order and
//! an `exp` of its own instead of the C library's). [`StopMatcher`] cuts the
//! streamed text before the first stop string without ever emitting part of one.

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
    temperature: f32,
    top_p: f32,
    top_k: u32,
    rng: ChaCha8Rng,
    /// Per-token buffers kept between calls (a vocabulary's worth: allocating them anew for
    /// every token costs page faults).
    weights: Vec<f64>,
    candidates: Vec<Candidate>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("temperature", &self.temperature)
            .field("top_p", &self.top_p)
            .field("top_k", &self.top_k)
            .finish_non_exhaustive()
    }
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
            temperature,
            top_p,
            top_k,
            rng: ChaCha8Rng::seed_from_u64(seed),
            weights: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// Whether this sampler always takes the most likely token (and draws nothing).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature < GREEDY_TEMPERATURE
    }

    /// The next token for these logits (one per vocabulary entry). Greedy decoding takes the
    /// largest logit (the lowest id among equals); otherwise the logits are divided by the
    /// temperature, cut to the `top_k` best, turned into probabilities (in `f64`), cut to
    /// the smallest set of best tokens holding `top_p` of the probability, and one token is
    /// drawn from what is left with one draw from the seeded generator (greedy decoding
    /// draws nothing).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SampleError> {
        let max = check(logits)?;
        if self.is_greedy() || self.top_k == 1 {
            return Ok(argmax(logits, max));
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
            rng,
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
            if nucleus {
                return Ok(sample_nucleus(
                    rng,
                    logits,
                    weights,
                    candidates,
                    total * top_p,
                ));
            }
            // Every token, in id order: no sort at all.
            let target = rng.random::<f64>() * total;
            return Ok(u32::try_from(find_by_id(weights, target)).unwrap_or(u32::MAX));
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
        Ok(draw(rng, candidates[..keep].iter().zip(&weights[..keep])))
    }
}

/// Top-p over the whole vocabulary (`weights` by id): orders the best tokens in growing
/// chunks (each selected in O(n), then sorted) until they hold `target` of the weight, so a
/// full sort happens only for flat distributions.
fn sample_nucleus(
    rng: &mut ChaCha8Rng,
    logits: &[f32],
    weights: &[f64],
    candidates: &mut Vec<Candidate>,
    target: f64,
) -> u32 {
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
        for i in sorted..end {
            cum += weight_of(&candidates[i]);
            if cum >= target || i + 1 == n {
                let kept = &candidates[..=i];
                return draw(rng, kept.iter().map(|c| (c, &weights[c.id as usize])));
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

/// Draws one candidate in proportion to its weight (not all zero), with one draw.
fn draw<'a>(
    rng: &mut ChaCha8Rng,
    candidates: impl Iterator<Item = (&'a Candidate, &'a f64)> + Clone,
) -> u32 {
    let total: f64 = candidates.clone().map(|(_, w)| w).sum();
    let target = rng.random::<f64>() * total;
    let mut cum = 0.0;
    let mut last = None;
    for (c, &w) in candidates {
        if w > 0.0 {
            last = Some(c.id);
            cum += w;
            if cum > target {
                return c.id;
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

/// What [`StopMatcher::push`] decided about a piece of streamed text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text that is now safe to send: it is not, and cannot become, part of a stop string.
    pub emit: String,
    /// A stop string was reached: generation ends, and `emit` is the last text.
    pub stopped: bool,
}

/// Finds stop strings in text that arrives in pieces. Text that could still turn into a stop
/// string is held back; text that turns out to be one is never emitted.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings; empty ones are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece of text. Emits what is certain not to be part of a stop string;
    /// on a stop string, emits the text before it and reports `stopped` (later pieces are
    /// ignored).
    pub fn push(&mut self, piece: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopStep {
                emit: piece.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(piece);
        // The leftmost complete stop string wins.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(start) = first {
            self.stopped = true;
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(start);
            return StopStep {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that some stop string starts with.
        let hold_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(hold_from);
        let emit = std::mem::replace(&mut self.held, rest);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// The end of the stream: the text held back (it never became a stop string); empty
    /// after a stop.
    pub fn finish(self) -> String {
        if self.stopped {
            String::new()
        } else {
            self.held
        }
    }
}

#[cfg(test)]
mod tests;
