//! Review by teacher forcing (`LlmEngine::score`) on the demo models: honest completions
//! score as the seeded sampler's own draws, cheats do not, and a validator running another
//! dtype still recognizes honest work. The figures are printed (`--nocapture`) so the
//! coordinator's thresholds can be calibrated against them.

use std::path::{Path, PathBuf};

use infermine_agent::engine::demo::synth;
use infermine_agent::engine::llm::synth::files_with_seed;
use infermine_agent::engine::llm::{Completion, LlmEngine};
use infermine_agent::engine::{CancelToken, Engine, EngineError};
use infermine_protocol::{
    ChatMessage, JobAssignment, JobOutput, JobParams, LlmParams, LlmScoreParams, TokenScore,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("infermine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sampling settings the tests run: (temperature, top_p, top_k).
const SAMPLED: [(f32, f32, u32); 2] = [(1.0, 1.0, 0), (0.8, 0.9, 40)];
const SEEDS: [u64; 4] = [1, 2, 3, 4];

fn request(seed: u64, (temperature, top_p, top_k): (f32, f32, u32)) -> LlmParams {
    LlmParams {
        messages: vec![
            ChatMessage {
                role: "system".into(),
                content: "You are terse.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Tell me about the sea.".into(),
            },
        ],
        max_tokens: Some(48),
        temperature,
        top_p,
        top_k,
        stop: vec![],
        seed,
    }
}

fn load(dir: &Path, dtype: Kind) -> LlmEngine {
    LlmEngine::load(dir, Device::Cpu, dtype).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn generate(engine: &LlmEngine, request: &LlmParams) -> Completion {
    engine
        .generate(request, &CancelToken::new(), &mut |_| {})
        .expect("generate")
}

fn score(engine: &LlmEngine, request: &LlmParams, ids: &[u32], text: &str) -> Vec<TokenScore> {
    let scored = engine
        .score(&score_params(request, ids, text), &CancelToken::new())
        .expect("score");
    assert_eq!(scored.scores.len(), ids.len());
    scored.scores
}

fn score_params(request: &LlmParams, ids: &[u32], text: &str) -> LlmScoreParams {
    LlmScoreParams {
        request: request.clone(),
        token_ids: ids.to_vec(),
        text: text.to_owned(),
    }
}

/// What a reviewer would look at: the share of tokens the seeded sampler drew, the share in
/// the sampling support, and `z = Σ(log q - E log q) / sqrt(Σ Var log q)` (about N(0, 1) for
/// an honest sample; undefined for greedy decoding), over all tokens (a token out of support
/// counts at the floor) and over the tokens in support only (`z_in`).
#[derive(Debug, Clone, Copy)]
struct Figures {
    tokens: usize,
    seeded: f64,
    support: f64,
    z: f64,
    z_in: f64,
    mean_logprob: f64,
}

fn z_score<'a>(scores: impl Iterator<Item = &'a TokenScore>) -> f64 {
    let (deviation, variance) = scores.fold((0.0, 0.0), |(d, v), s| {
        (
            d + f64::from(s.sample_logprob) - f64::from(s.expected_logprob),
            v + f64::from(s.logprob_variance),
        )
    });
    if variance > 0.0 {
        deviation / variance.sqrt()
    } else {
        f64::NAN
    }
}

fn figures(scores: &[TokenScore]) -> Figures {
    let n = scores.len() as f64;
    let share = |f: &dyn Fn(&TokenScore) -> bool| scores.iter().filter(|s| f(s)).count() as f64 / n;
    Figures {
        tokens: scores.len(),
        seeded: share(&|s| s.seeded == s.id),
        support: share(&|s| s.in_support),
        z: z_score(scores.iter()),
        z_in: z_score(scores.iter().filter(|s| s.in_support)),
        mean_logprob: scores.iter().map(|s| f64::from(s.logprob)).sum::<f64>() / n,
    }
}

fn report(case: &str, f: Figures) {
    eprintln!(
        "{case:<52} tokens {:>3}  seeded {:>5.3}  support {:>5.3}  z {:>9.2}  z_in {:>7.2}  \
         mean logprob {:>7.3}",
        f.tokens, f.seeded, f.support, f.z, f.z_in, f.mean_logprob
    );
}

/// English text as the model's tokenizer splits it: a completion nobody sampled.
fn canned(engine: &LlmEngine) -> (Vec<u32>, String) {
    let text = "The sea is a vast body of salt water that covers most of the planet, \
                home to fish, whales and coral reefs.";
    let ids = engine.tokenizer().encode(text).expect("encode");
    (ids, text.to_owned())
}

#[test]
fn honest_sampled_completions_are_the_seeded_draws() {
    let dir = TempDir::new("score-honest");
    let mut zs = Vec::new();
    for id in ["tiny-llama", "tiny-mixtral"] {
        let engine = load(&synth(id, &dir.0).expect("synth"), Kind::Float);
        for settings in SAMPLED {
            for seed in SEEDS {
                let request = request(seed, settings);
                let completion = generate(&engine, &request);
                assert!(!completion.ids.is_empty());
                let scored = engine
                    .score(
                        &score_params(&request, &completion.ids, &completion.text),
                        &CancelToken::new(),
                    )
                    .expect("score");
                assert!(scored.text_matches, "{id} {settings:?} seed {seed}");
                assert_eq!(scored.prompt_tokens, completion.usage.prompt_tokens);
                for (at, s) in scored.scores.iter().enumerate() {
                    assert!(s.in_support, "{id} {settings:?} seed {seed} #{at}: {s:?}");
                    assert_eq!(s.seeded, s.id, "{id} {settings:?} seed {seed} #{at}");
                    assert!(s.expected_logprob <= 0.0 && s.logprob_variance >= 0.0);
                }
                let f = figures(&scored.scores);
                report(&format!("honest {id} {settings:?} seed {seed}"), f);
                assert!(f.z.abs() < 4.5, "{id} {settings:?} seed {seed}: z {}", f.z);
                zs.push(f.z);
            }
        }
    }
    let mean = zs.iter().sum::<f64>() / zs.len() as f64;
    let sd = (zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (zs.len() - 1) as f64).sqrt();
    eprintln!(
        "honest z over {} runs: mean {mean:.2}, sd {sd:.2}",
        zs.len()
    );
    // 16 draws of about N(0, 1): the mean lies within ±1 with overwhelming odds.
    assert!(mean.abs() < 1.0, "mean z {mean}");
}

#[test]
fn long_completions_are_scored_across_forward_chunks() {
    // The scorer feeds the completion 128 tokens per pass; Mistral's 32-token sliding window
    // then masks across chunk boundaries, where generation saw one token at a time.
    let dir = TempDir::new("score-long");
    for id in ["tiny-mistral", "tiny-llama"] {
        let engine = load(&synth(id, &dir.0).expect("synth"), Kind::Float);
        let mut longest = 0;
        for seed in SEEDS {
            let request = LlmParams {
                max_tokens: Some(400),
                ..request(seed, SAMPLED[0])
            };
            let completion = generate(&engine, &request);
            let scores = score(&engine, &request, &completion.ids, &completion.text);
            for (at, s) in scores.iter().enumerate() {
                assert!(
                    s.seeded == s.id && s.in_support,
                    "{id} seed {seed} #{at}: {s:?}"
                );
            }
            report(&format!("honest long {id} seed {seed}"), figures(&scores));
            longest = longest.max(scores.len());
        }
        assert!(
            longest > 256,
            "{id}: some completion spans three chunks ({longest})"
        );
    }
}

#[test]
fn honest_greedy_completions_are_in_support_and_seeded() {
    let dir = TempDir::new("score-greedy");
    for id in ["tiny-llama", "tiny-mixtral"] {
        let engine = load(&synth(id, &dir.0).expect("synth"), Kind::Float);
        let request = request(9, (0.0, 1.0, 0));
        let completion = generate(&engine, &request);
        let scores = score(&engine, &request, &completion.ids, &completion.text);
        for s in &scores {
            assert!(
                s.in_support && s.seeded == s.id && s.rank == 0,
                "{id}: {s:?}"
            );
            assert_eq!((s.sample_logprob, s.logprob_variance), (0.0, 0.0));
        }
        report(&format!("honest greedy {id}"), figures(&scores));
        // The same completion under top_k 1 is greedy decoding too.
        let top1 = LlmParams {
            top_k: 1,
            temperature: 0.7,
            ..request
        };
        let scores = score(&engine, &top1, &completion.ids, &completion.text);
        assert!(scores.iter().all(|s| s.in_support && s.seeded == s.id));
    }
}

#[test]
fn canned_text_scores_far_below_sampled_text() {
    let dir = TempDir::new("score-canned");
    for id in ["tiny-llama", "tiny-mixtral"] {
        let engine = load(&synth(id, &dir.0).expect("synth"), Kind::Float);
        let (ids, text) = canned(&engine);
        for settings in SAMPLED {
            let request = request(1, settings);
            let scored = engine
                .score(&score_params(&request, &ids, &text), &CancelToken::new())
                .expect("score");
            assert!(scored.text_matches, "the canned ids do decode to the text");
            let f = figures(&scored.scores);
            report(&format!("canned {id} {settings:?}"), f);
            assert!(f.seeded < 0.2, "{id} {settings:?}: {f:?}");
            assert!(f.z < -8.0, "{id} {settings:?}: {f:?}");
        }
        let greedy = figures(&score(&engine, &request(1, (0.0, 1.0, 0)), &ids, &text));
        report(&format!("canned {id} greedy"), greedy);
        assert!(greedy.support < 0.2, "{greedy:?}");
    }
}

#[test]
fn another_models_completions_score_low() {
    let dir = TempDir::new("score-other");
    // tiny-mistral and tiny-mixtral share their tokenizer; tiny-llama's twin is the same
    // architecture with other weights.
    let twin = dir.0.join("tiny-llama-twin");
    std::fs::create_dir_all(&twin).expect("twin dir");
    for (name, bytes) in files_with_seed("tiny-llama", 77).expect("files") {
        std::fs::write(twin.join(name), bytes).expect("write");
    }
    let pairs = [
        (
            synth("tiny-mistral", &dir.0).expect("synth"),
            "tiny-mixtral",
        ),
        (twin, "tiny-llama"),
    ];
    for (miner_dir, validator_id) in pairs {
        let miner = load(&miner_dir, Kind::Float);
        let validator = load(&synth(validator_id, &dir.0).expect("synth"), Kind::Float);
        let miner_id = miner_dir.file_name().expect("name").to_string_lossy();
        let case = |what: &str| format!("{what} {miner_id} for {validator_id}");
        let mut all = Vec::new();
        for settings in SAMPLED {
            for seed in SEEDS {
                let request = request(seed, settings);
                let completion = generate(&miner, &request);
                let scored = validator
                    .score(
                        &score_params(&request, &completion.ids, &completion.text),
                        &CancelToken::new(),
                    )
                    .expect("score");
                assert!(scored.text_matches, "same tokenizer, same text");
                all.extend(scored.scores);
            }
        }
        let f = figures(&all);
        report(&case("other model, sampled, all runs:"), f);
        assert!(f.seeded < 0.3, "{f:?}");
        assert!(f.z < -8.0, "{f:?}");
        let request = request(1, (0.0, 1.0, 0));
        let completion = generate(&miner, &request);
        let greedy = figures(&score(
            &validator,
            &request,
            &completion.ids,
            &completion.text,
        ));
        report(&case("other model, greedy:"), greedy);
        assert!(greedy.support < 0.5, "{greedy:?}");
    }
}

/// Writes a copy of the model in `from` whose every weight moved by `noise` times that
/// tensor's standard deviation (Gaussian, seeded): a stand-in for a cheaper near-copy, such
/// as a coarse quantization.
fn perturbed(from: &Path, to: &Path, noise: f64) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
    let weights = from.join("model.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut tensors = Tensor::read_safetensors(&weights).expect("read");
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 weights");
            let sd = t.std(true).double_value(&[]);
            let moved: Vec<f32> = values
                .iter()
                .map(|&v| {
                    // Box–Muller from two uniform draws.
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    v + (noise * sd * normal) as f32
                })
                .collect();
            (name, Tensor::from_slice(&moved).view(t.size().as_slice()))
        })
        .collect();
    Tensor::write_safetensors(&tensors, to.join("model.safetensors")).expect("write");
}

#[test]
fn near_copies_of_the_model_drift_with_their_distance() {
    let dir = TempDir::new("score-near");
    let original = synth("tiny-llama", &dir.0).expect("synth");
    let validator = load(&original, Kind::Float);
    for noise in [0.01, 0.05, 0.2] {
        let copy = dir.0.join(format!("near-{noise}"));
        perturbed(&original, &copy, noise);
        let miner = load(&copy, Kind::Float);
        let mut all = Vec::new();
        for settings in SAMPLED {
            for seed in SEEDS {
                let request = request(seed, settings);
                let completion = generate(&miner, &request);
                all.extend(score(
                    &validator,
                    &request,
                    &completion.ids,
                    &completion.text,
                ));
            }
        }
        let f = figures(&all);
        report(&format!("near copy tiny-llama, noise {noise}, sampled"), f);
        if noise >= 0.2 {
            assert!(f.seeded < 0.5, "{f:?}");
        }
    }
}

#[test]
fn a_bf16_validator_recognizes_f32_completions() {
    let dir = TempDir::new("score-bf16");
    let mut shares = Vec::new();
    for id in ["tiny-llama", "tiny-mixtral"] {
        let path = synth(id, &dir.0).expect("synth");
        let miner = load(&path, Kind::Float);
        let validator = load(&path, Kind::BFloat16);
        let (mut all, mut drift) = (Vec::new(), Vec::new());
        for settings in SAMPLED {
            for seed in SEEDS {
                let request = request(seed, settings);
                let completion = generate(&miner, &request);
                let params = score_params(&request, &completion.ids, &completion.text);
                let scored = validator
                    .score(&params, &CancelToken::new())
                    .expect("score");
                assert!(scored.text_matches);
                let exact = miner.score(&params, &CancelToken::new()).expect("score");
                drift.extend(
                    scored
                        .scores
                        .iter()
                        .zip(&exact.scores)
                        .map(|(b, f)| f64::from((b.logprob - f.logprob).abs())),
                );
                report(
                    &format!("bf16 validator {id} {settings:?} seed {seed}"),
                    figures(&scored.scores),
                );
                all.extend(scored.scores);
            }
        }
        let f = figures(&all);
        report(&format!("bf16 validator {id}, all sampled runs"), f);
        let mean = drift.iter().sum::<f64>() / drift.len() as f64;
        let max = drift.iter().copied().fold(0.0, f64::max);
        eprintln!("bf16 vs f32 validator {id}: |Δ logprob| mean {mean:.4}, max {max:.4}");
        let request = request(1, (0.0, 1.0, 0));
        let completion = generate(&miner, &request);
        let greedy = figures(&score(
            &validator,
            &request,
            &completion.ids,
            &completion.text,
        ));
        report(&format!("bf16 validator {id} greedy"), greedy);
        assert!(greedy.support >= 0.95, "{id}: {greedy:?}");
        assert!(f.support >= 0.95, "{id}: {f:?}");
        assert!(f.z_in.abs() < 4.5, "{id}: {f:?}");
        shares.push((id, f.seeded));
    }
    // Honest, but not bit-identical: bf16 rounds the logits (by about 1/256 of their size),
    // which moves the boundaries the seeded draw falls between, so a share of draws land on
    // a neighbour. Far above what another model or canned text reaches (a few percent).
    for (id, seeded) in shares {
        assert!(seeded >= 0.7, "{id}: seeded share {seeded}");
    }
}

#[test]
fn a_wrong_text_is_flagged_and_bad_ids_are_refused() {
    let dir = TempDir::new("score-refuse");
    let engine = load(&synth("tiny-llama", &dir.0).expect("synth"), Kind::Float);
    let request = request(3, SAMPLED[1]);
    let completion = generate(&engine, &request);
    let cancel = CancelToken::new();

    let wrong = format!("{} (edited)", completion.text);
    let scored = engine
        .score(&score_params(&request, &completion.ids, &wrong), &cancel)
        .expect("score");
    assert!(!scored.text_matches);
    // A stop string the completion contains cuts the expected text.
    let mut stopped = request.clone();
    let chars: Vec<char> = completion.text.chars().collect();
    if chars.len() >= 6 {
        stopped.stop = vec![chars[3..6].iter().collect()];
        let scored = engine
            .score(
                &score_params(&stopped, &completion.ids, &completion.text),
                &cancel,
            )
            .expect("score");
        assert!(!scored.text_matches, "the text runs past the stop string");
    }

    let refused = |ids: Vec<u32>| {
        engine
            .score(&score_params(&request, &ids, ""), &cancel)
            .expect_err("refused")
    };
    let vocab = engine.model().config().vocab_size as u32;
    for (ids, says) in [
        (vec![], "empty"),
        (vec![1, vocab, 2], "outside the model's vocabulary"),
        (vec![1; 600], "context"),
    ] {
        let err = refused(ids);
        assert!(matches!(err, EngineError::InvalidParams(_)), "{err:?}");
        assert!(err.to_string().contains(says), "{err}");
    }

    let cancelled = CancelToken::new();
    cancelled.cancel();
    let err = engine
        .score(
            &score_params(&request, &completion.ids, &completion.text),
            &cancelled,
        )
        .expect_err("cancelled");
    assert_eq!(err, EngineError::Cancelled);
}

#[test]
fn score_jobs_run_through_the_engine_trait() {
    let dir = TempDir::new("score-job");
    let mut engine = load(&synth("tiny-mixtral", &dir.0).expect("synth"), Kind::Float);
    let request = request(5, SAMPLED[0]);
    let completion = generate(&engine, &request);
    let job = JobAssignment {
        id: uuid::Uuid::now_v7(),
        model: "tiny-mixtral".into(),
        slot: 0,
        params: JobParams::LlmScore(score_params(&request, &completion.ids, &completion.text)),
        lease_ms: 60_000,
        attempt: 1,
        upload_url: None,
    };
    let output = engine
        .run(&job, &CancelToken::new(), &mut |_| {})
        .expect("run");
    let JobOutput::TokenScores {
        scores,
        prompt_tokens,
        text_matches,
    } = output
    else {
        panic!("token scores, got {output:?}")
    };
    assert!(text_matches);
    assert_eq!(prompt_tokens, completion.usage.prompt_tokens);
    assert_eq!(
        scores.iter().map(|s| s.seeded).collect::<Vec<_>>(),
        completion.ids
    );
}
