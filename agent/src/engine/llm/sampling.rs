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
mod tests {
    use super::*;

    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 10.0 - 5.0).collect()
    }

    fn run(sampler: &mut Sampler, logits: &[f32], steps: usize) -> Vec<u32> {
        (0..steps)
            .map(|_| sampler.sample(logits).expect("finite logits"))
            .collect()
    }

    #[test]
    fn greedy_takes_the_largest_logit_lowest_id_on_ties() {
        let mut s = Sampler::with(0.0, 1.0, 0, 1);
        assert!(s.is_greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), Ok(1));
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -2.0]), Ok(1));
        let mut s = Sampler::with(1e-6, 0.5, 7, 1);
        assert!(s.is_greedy());
        assert_eq!(s.sample(&[5.0, 1.0, 9.0]), Ok(2));
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let l = logits(1000, 3);
        let a = run(&mut Sampler::with(0.8, 0.95, 40, 42), &l, 200);
        let b = run(&mut Sampler::with(0.8, 0.95, 40, 42), &l, 200);
        assert_eq!(a, b);
        let a = run(&mut Sampler::with(1.3, 1.0, 0, 42), &l, 200);
        let b = run(&mut Sampler::with(1.3, 1.0, 0, 42), &l, 200);
        assert_eq!(a, b);
        let a = run(&mut Sampler::with(1.0, 0.9, 0, 42), &l, 200);
        let b = run(&mut Sampler::with(1.0, 0.9, 0, 42), &l, 200);
        assert_eq!(a, b);
    }

    #[test]
    fn different_seeds_give_different_tokens() {
        let l = logits(1000, 3);
        let a = run(&mut Sampler::with(1.0, 1.0, 0, 1), &l, 100);
        let b = run(&mut Sampler::with(1.0, 1.0, 0, 2), &l, 100);
        assert_ne!(a, b);
    }

    #[test]
    fn the_stream_is_pinned_for_a_seed() {
        // Pinned values: a change here changes every seeded completion on the network.
        let l = [0.0f32, 2f32.ln(), 3f32.ln()];
        let got = run(&mut Sampler::with(1.0, 1.0, 0, 7), &l, 12);
        let again = run(&mut Sampler::with(1.0, 1.0, 0, 7), &l, 12);
        assert_eq!(got, again);
        assert_eq!(got, PINNED_SEED7);
    }

    const PINNED_SEED7: [u32; 12] = [0, 1, 2, 2, 2, 1, 0, 2, 1, 2, 1, 1];

    #[test]
    fn every_path_is_pinned_for_a_seed() {
        // Full vocabulary, top-k, top-p, both: pinned so that a change to the arithmetic
        // (sum order, exp, tie-breaking) shows up here rather than on the network.
        let l = logits(50_000, 3);
        let mut got = Vec::new();
        for (t, p, k) in [
            (1.0, 1.0, 0),
            (0.8, 1.0, 40),
            (1.0, 0.9, 0),
            (0.7, 0.95, 50),
        ] {
            got.push(run(&mut Sampler::with(t, p, k, 99), &l, 6));
        }
        assert_eq!(got, PINNED_PATHS);
    }

    const PINNED_PATHS: [[u32; 6]; 4] = [
        [32148, 42661, 17386, 38889, 34420, 35004],
        [17925, 33808, 1556, 9266, 24462, 22662],
        [49262, 4079, 4611, 6082, 37217, 12997],
        [43549, 7783, 29477, 2417, 33808, 33808],
    ];

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let l = logits(5000, 9);
        let greedy = run(&mut Sampler::with(0.0, 1.0, 0, 5), &l, 1)[0];
        assert_eq!(
            run(&mut Sampler::with(1.0, 1.0, 1, 5), &l, 50),
            vec![greedy; 50]
        );
        assert_eq!(
            run(&mut Sampler::with(1.0, 1e-9, 0, 5), &l, 50),
            vec![greedy; 50]
        );
        assert_eq!(
            run(&mut Sampler::with(2.0, 0.0, 100, 5), &l, 50),
            vec![greedy; 50]
        );
    }

    #[test]
    fn top_k_only_draws_from_the_k_best() {
        let l = logits(5000, 11);
        let mut ranked: Vec<u32> = (0..5000).collect();
        ranked.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let best: std::collections::HashSet<u32> = ranked[..5].iter().copied().collect();
        let got = run(&mut Sampler::with(5.0, 1.0, 5, 1), &l, 500);
        assert!(got.iter().all(|t| best.contains(t)));
        assert_eq!(
            got.iter().collect::<std::collections::HashSet<_>>().len(),
            5
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2: top_p 0.75 keeps {0, 1}; 0.85 keeps all three.
        let l = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let got = run(&mut Sampler::with(1.0, 0.75, 0, 3), &l, 2000);
        assert!(got.iter().all(|&t| t < 2));
        assert!(got.contains(&0) && got.contains(&1));
        let got = run(&mut Sampler::with(1.0, 0.85, 0, 3), &l, 2000);
        assert!(got.contains(&2));
        // The growing prefix: a flat vocabulary larger than the first prefix.
        let flat = vec![0.0f32; 1000];
        let got = run(&mut Sampler::with(1.0, 0.5, 0, 3), &flat, 2000);
        assert!(got.iter().all(|&t| t < 500), "ties rank by id");
        assert!(got.iter().any(|&t| t >= 256));
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // softmax([0, ln 2, ln 3]) = [1/6, 2/6, 3/6].
        let l = [0.0f32, 2f32.ln(), 3f32.ln()];
        for (top_k, top_p) in [(0, 1.0), (3, 1.0), (0, 0.999_999)] {
            let mut s = Sampler::with(1.0, top_p, top_k, 2024);
            let mut counts = [0usize; 3];
            for _ in 0..20_000 {
                counts[s.sample(&l).expect("finite") as usize] += 1;
            }
            for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
                let freq = counts[i] as f64 / 20_000.0;
                assert!(
                    (freq - want).abs() < 0.02,
                    "k={top_k} p={top_p}: token {i}: {freq} vs {want}"
                );
            }
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let l = [0.0f32, 1.0];
        let count_one = |t: f32| {
            run(&mut Sampler::with(t, 1.0, 0, 8), &l, 10_000)
                .iter()
                .filter(|&&x| x == 1)
                .count()
        };
        // p(1) = 1 / (1 + e^{-1/t}): 0.731 at t=1, 0.881 at t=0.5, 0.622 at t=2.
        assert!((count_one(1.0) as f64 / 10_000.0 - 0.731).abs() < 0.02);
        assert!((count_one(0.5) as f64 / 10_000.0 - 0.881).abs() < 0.02);
        assert!((count_one(2.0) as f64 / 10_000.0 - 0.622).abs() < 0.02);
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        for (k, p) in [(0, 1.0), (3, 1.0), (0, 0.9), (4, 0.99)] {
            let got = run(&mut Sampler::with(1.0, p, k, 1), &l, 500);
            assert!(got.iter().all(|&t| t == 1 || t == 3), "k={k} p={p}");
        }
    }

    #[test]
    fn unusable_logits_are_errors_not_panics() {
        for t in [0.0, 1.0] {
            let mut s = Sampler::with(t, 0.9, 10, 1);
            assert_eq!(s.sample(&[]), Err(SampleError::Empty));
            assert!(matches!(
                s.sample(&[0.0, f32::NAN, 1.0]),
                Err(SampleError::NotFinite { index: 1, .. })
            ));
            assert!(matches!(
                s.sample(&[f32::INFINITY]),
                Err(SampleError::NotFinite { index: 0, .. })
            ));
            assert_eq!(
                s.sample(&[f32::NEG_INFINITY; 3]),
                Err(SampleError::AllMasked)
            );
        }
    }

    #[test]
    fn token_logprob_is_log_softmax() {
        let l = [0.0f32, 2f32.ln(), 3f32.ln()];
        assert!((token_logprob(&l, 0) - (1.0f32 / 6.0).ln()).abs() < 1e-6);
        assert!((token_logprob(&l, 2) - 0.5f32.ln()).abs() < 1e-6);
        // Large logits do not overflow.
        assert!((token_logprob(&[1000.0, 1000.0], 1) - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(
            token_logprob(&[0.0, f32::NEG_INFINITY], 1),
            f32::NEG_INFINITY
        );
        assert!(token_logprob(&l, 3).is_nan());
        assert!(token_logprob(&[f32::NAN, 0.0], 1).is_nan());
    }

    #[test]
    fn portable_exp_matches_libm_to_an_ulp_or_two() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-800.0), 0.0);
        assert_eq!(exp_nonpositive(-708.5), 0.0);
        assert_eq!(exp_nonpositive(5.0), 1.0);
        assert!(exp_nonpositive(f64::NAN).is_nan());
        let mut worst = 0.0f64;
        let mut x = 0.0f64;
        while x > -708.0 {
            let want = x.exp();
            let got = exp_nonpositive(x);
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_731_3;
        }
        assert!(worst < 3.0 * f64::EPSILON, "worst relative error {worst:e}");
    }

    #[test]
    #[ignore = "timing, run by hand: cargo test -p infermine-agent --release -- --ignored sampling_speed"]
    fn sampling_speed() {
        let l = logits(128_256, 1);
        for (t, p, k) in [
            (0.0, 1.0, 0),
            (1.0, 1.0, 0),
            (0.7, 1.0, 40),
            (0.7, 0.9, 0),
            (0.7, 0.9, 50),
        ] {
            let mut s = Sampler::with(t, p, k, 1);
            let start = std::time::Instant::now();
            for _ in 0..100 {
                s.sample(&l).expect("finite");
            }
            eprintln!("t={t} p={p} k={k}: {:?} per token", start.elapsed() / 100);
        }
    }

    fn stops(list: &[&str]) -> StopMatcher {
        StopMatcher::new(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    /// Feeds the pieces; returns what was emitted step by step, whether it stopped, and the
    /// flush.
    fn feed(m: &mut StopMatcher, pieces: &[&str]) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        for p in pieces {
            let step = m.push(p);
            out.push(step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn no_stop_strings_emit_everything_at_once() {
        let mut m = stops(&[]);
        let (out, stopped) = feed(&mut m, &["Hello", " wor", "ld"]);
        assert_eq!(out, ["Hello", " wor", "ld"]);
        assert!(!stopped);
        assert_eq!(m.finish(), "");
        // Empty stop strings are ignored.
        let mut m = stops(&[""]);
        assert_eq!(m.push("x").emit, "x");
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_never_emitted() {
        let mut m = stops(&["</answer>"]);
        let (out, stopped) = feed(&mut m, &["The result", " is 4</", "ans", "wer> trailing"]);
        assert_eq!(out, ["The result", " is 4", "", ""]);
        assert!(stopped);
        assert!(m.stopped());
        assert_eq!(m.push("more").emit, "");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = stops(&["</answer>"]);
        let (out, stopped) = feed(&mut m, &["a </an", "swer is", " here"]);
        assert_eq!(out, ["a ", "</answer is", " here"]);
        assert!(!stopped);
        let mut m = stops(&["STOP"]);
        let (out, _) = feed(&mut m, &["xST"]);
        assert_eq!(out, ["x"]);
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn the_leftmost_of_several_stop_strings_wins() {
        let mut m = stops(&["\n\n", "User:", "###"]);
        let (out, stopped) = feed(&mut m, &["Answer.", " ### User:", " x"]);
        assert_eq!(out, ["Answer.", " "]);
        assert!(stopped);
        let mut m = stops(&["bc", "abcd"]);
        let (out, stopped) = feed(&mut m, &["xa", "bc"]);
        assert_eq!(out, ["x", "a"]);
        assert!(stopped);
    }

    #[test]
    fn overlapping_prefixes_hold_the_longest_candidate() {
        // "aab": after "aa" both "a…" suffixes could start it; on "aaab" the match is at 1.
        let mut m = stops(&["aab"]);
        let (out, stopped) = feed(&mut m, &["a", "a", "a", "b"]);
        assert_eq!(out, ["", "", "a", ""]);
        assert!(stopped);
        let mut m = stops(&["abab"]);
        let (out, stopped) = feed(&mut m, &["aba", "bab"]);
        assert_eq!(out, ["", ""]);
        assert!(stopped);
        let mut m = stops(&["abab"]);
        let (out, stopped) = feed(&mut m, &["ab", "a", "a"]);
        assert_eq!(out, ["", "", "aba"]);
        assert!(!stopped);
        assert_eq!(m.finish(), "a");
    }

    #[test]
    fn multi_byte_characters_are_never_split() {
        // The stop string shares its first byte (0xE6) with "東" but not its first char.
        let mut m = stops(&["木曜", "🙂!"]);
        let (out, stopped) = feed(&mut m, &["東京", "木", "の🙂", "?🙂", "!"]);
        assert_eq!(out, ["東京", "", "木の", "🙂?", ""]);
        assert!(stopped);
        let mut m = stops(&["é"]);
        assert_eq!(m.push("naïve café").emit, "naïve caf");
    }

    #[test]
    fn a_stop_at_the_very_start_emits_nothing() {
        let mut m = stops(&["<|end|>"]);
        let step = m.push("<|end|>tail");
        assert_eq!(
            step,
            StopStep {
                emit: String::new(),
                stopped: true
            }
        );
        let mut m = stops(&["<|end|>"]);
        let (out, stopped) = feed(&mut m, &["<|", "end", "|>"]);
        assert_eq!(out, ["", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn emitted_text_plus_flush_is_the_text_up_to_the_first_stop() {
        let text = "Once upon a time, 東京 had a café. THE END. Not this.";
        let stop_list = ["THE END", "café!", "ime,x"];
        for chunk in 1..8 {
            let mut m = stops(&stop_list);
            let mut out = String::new();
            let chars: Vec<char> = text.chars().collect();
            let mut stopped = false;
            for piece in chars.chunks(chunk) {
                let piece: String = piece.iter().collect();
                let step = m.push(&piece);
                out.push_str(&step.emit);
                if step.stopped {
                    stopped = true;
                    break;
                }
            }
            assert!(stopped);
            out.push_str(&m.finish());
            assert_eq!(out, "Once upon a time, 東京 had a café. ", "chunk {chunk}");
        }
    }
}
