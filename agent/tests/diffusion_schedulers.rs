//! The diffusion samplers against diffusers.
//!
//! `scripts/fixtures/diffusion_schedulers.py` ran diffusers' own schedulers, configured as the
//! SD 1.5, SDXL and FLUX.1-dev pipelines configure them, over fixed random latents and model
//! outputs, and recorded the schedule and every step in `tests/fixtures/diffusion/schedulers/`.
//! Here the same inputs go through this crate's samplers: timesteps and sigmas must agree within
//! 1e-6 relative, every scaled input and step output within 1e-5 (f32, relative above 1).
//! Each step starts from diffusers' previous output (DPM++ also keeps its history from those),
//! so a step is judged on its own rather than on f32 rounding compounded over earlier steps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use infermine_agent::engine::diffusion::scheduler::{
    FlowMatchConfig, FlowMatchEuler, SamplerKind, ScheduleConfig, Scheduler, SchedulerError,
};
use serde::Deserialize;
use tch::{Kind, Tensor};

const SCHEDULE_TOLERANCE: f64 = 1e-6;
const STEP_TOLERANCE: f64 = 1e-5;
const STEPS: [usize; 2] = [4, 25];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/schedulers")
}

struct Case {
    name: String,
    tensors: HashMap<String, Tensor>,
}

impl Case {
    fn load(name: &str) -> Self {
        let path = fixture_dir().join(format!("{name}.safetensors"));
        let tensors = Tensor::read_safetensors(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .into_iter()
            .collect();
        Self {
            name: name.to_owned(),
            tensors,
        }
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor `{key}`", self.name))
    }

    fn values(&self, key: &str) -> Vec<f32> {
        Vec::<f32>::try_from(self.tensor(key)).expect("f32 tensor")
    }

    fn check_schedule(&self, key: &str, actual: &[f32]) {
        let expected = self.values(key);
        assert_eq!(actual.len(), expected.len(), "{}: {key} length", self.name);
        for (i, (&a, &e)) in actual.iter().zip(&expected).enumerate() {
            let (a, e) = (f64::from(a), f64::from(e));
            assert!(
                (a - e).abs() <= SCHEDULE_TOLERANCE * e.abs().max(f64::MIN_POSITIVE),
                "{}: {key}[{i}] = {a}, diffusers has {e}",
                self.name
            );
        }
    }

    fn check_step(&self, key: &str, step: usize, actual: &Tensor) {
        let expected = self.tensor(key).get(step as i64);
        assert_eq!(
            actual.size(),
            expected.size(),
            "{}: {key}[{step}] shape",
            self.name
        );
        let error = (actual - &expected).abs() / expected.abs().clamp_min(1.0);
        let worst = error.max().double_value(&[]);
        assert!(
            worst <= STEP_TOLERANCE,
            "{}: {key}[{step}] differs from diffusers by {worst:e}",
            self.name
        );
    }
}

#[derive(Debug, Deserialize)]
struct Summary {
    cases: HashMap<String, CaseSummary>,
}

#[derive(Debug, Deserialize)]
struct CaseSummary {
    steps: usize,
    mu: Option<f64>,
    image_side: Option<usize>,
}

fn summary() -> Summary {
    let text = std::fs::read_to_string(fixture_dir().join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary.json parses")
}

fn check_sd(family: &str, config: &ScheduleConfig, kind: SamplerKind, steps: usize) {
    let case = Case::load(&format!("{family}_{}_{steps}", kind.name()));
    let mut scheduler = Scheduler::new(kind, config, steps).expect("scheduler builds");
    case.check_schedule("timesteps", scheduler.timesteps());
    if kind != SamplerKind::Ddim {
        case.check_schedule("sigmas", scheduler.sigmas());
    }
    case.check_schedule("init_noise_sigma", &[scheduler.init_noise_sigma()]);
    let mut sample = case.tensor("sample").shallow_clone();
    for step in 0..steps {
        let scaled = scheduler.scale_model_input(&sample, step).expect("scale");
        case.check_step("scaled", step, &scaled);
        let model_output = case.tensor("model_outputs").get(step as i64);
        let noise = kind
            .needs_noise()
            .then(|| case.tensor("noises").get(step as i64));
        let next = scheduler
            .step(&model_output, step, &sample, noise.as_ref())
            .expect("step");
        case.check_step("outputs", step, &next);
        sample = case.tensor("outputs").get(step as i64);
    }
}

#[test]
fn sd15_samplers_match_diffusers() {
    for kind in SamplerKind::ALL {
        for steps in STEPS {
            check_sd("sd15", &ScheduleConfig::sd15(), kind, steps);
        }
    }
}

#[test]
fn sdxl_samplers_match_diffusers() {
    for kind in SamplerKind::ALL {
        for steps in STEPS {
            check_sd("sdxl", &ScheduleConfig::sdxl(), kind, steps);
        }
    }
}

#[test]
fn flux_flow_match_euler_matches_diffusers() {
    let summary = summary();
    let config = FlowMatchConfig::flux_dev();
    for side in [1024, 512] {
        for steps in STEPS {
            let name = format!("flux_{side}_{steps}");
            let meta = &summary.cases[&name];
            assert_eq!((meta.steps, meta.image_side), (steps, Some(side)));
            let case = Case::load(&name);
            let seq_len = FlowMatchConfig::image_seq_len(side, side);
            let scheduler = FlowMatchEuler::new(&config, steps, seq_len).expect("flux schedule");
            let mu = meta.mu.expect("flux cases record mu");
            assert!(
                (scheduler.mu() - mu).abs() < 1e-12,
                "{name}: mu {} vs {mu}",
                scheduler.mu()
            );
            case.check_schedule("timesteps", scheduler.timesteps());
            case.check_schedule("sigmas", scheduler.sigmas());
            let mut sample = case.tensor("sample").shallow_clone();
            for step in 0..steps {
                let model_output = case.tensor("model_outputs").get(step as i64);
                let next = scheduler.step(&model_output, step, &sample).expect("step");
                case.check_step("outputs", step, &next);
                sample = case.tensor("outputs").get(step as i64);
            }
        }
    }
}

#[test]
fn flux_mu_spans_base_to_max_shift() {
    let config = FlowMatchConfig::flux_dev();
    assert_eq!(FlowMatchConfig::image_seq_len(1024, 1024), 4096);
    assert_eq!(FlowMatchConfig::image_seq_len(512, 512), 1024);
    assert!((config.mu(4096) - 1.15).abs() < 1e-12);
    assert!((config.mu(256) - 0.5).abs() < 1e-12);
}

#[test]
fn request_names_parse() {
    let names = ["euler", "euler_a", "dpmpp_2m_karras", "ddim"];
    let kinds: Vec<SamplerKind> = names.iter().map(|n| n.parse().expect(n)).collect();
    assert_eq!(kinds, SamplerKind::ALL);
    let error = "dpm++".parse::<SamplerKind>().expect_err("not a sampler");
    assert!(matches!(error, SchedulerError::UnknownSampler { .. }));
    assert!(
        error
            .to_string()
            .contains("euler, euler_a, dpmpp_2m_karras, ddim")
    );
}

#[test]
fn step_counts_outside_the_training_range_are_rejected() {
    for steps in [0, 1001] {
        let error = Scheduler::new(SamplerKind::Euler, &ScheduleConfig::sdxl(), steps)
            .expect_err("invalid step count");
        assert!(
            matches!(error, SchedulerError::InvalidSteps { max: 1000, .. }),
            "{error}"
        );
    }
    assert!(FlowMatchEuler::new(&FlowMatchConfig::flux_dev(), 0, 4096).is_err());
}

#[test]
fn ancestral_step_without_noise_is_an_error() {
    let mut scheduler =
        Scheduler::new(SamplerKind::EulerAncestral, &ScheduleConfig::sdxl(), 4).expect("builds");
    let latents = Tensor::zeros([1, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
    let error = scheduler
        .step(&latents, 0, &latents, None)
        .expect_err("noise is required");
    assert!(
        matches!(error, SchedulerError::NoiseRequired { .. }),
        "{error}"
    );
}

#[test]
fn dpm_solver_must_be_stepped_in_order() {
    let mut scheduler =
        Scheduler::new(SamplerKind::DpmPp2mKarras, &ScheduleConfig::sd15(), 4).expect("builds");
    let latents = Tensor::zeros([1, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
    let error = scheduler
        .step(&latents, 1, &latents, None)
        .expect_err("step 0 comes first");
    assert!(
        matches!(
            error,
            SchedulerError::OutOfOrder {
                expected: 0,
                got: 1,
                ..
            }
        ),
        "{error}"
    );
    let error = scheduler
        .scale_model_input(&latents, 4)
        .expect_err("a 4-step schedule has no step 4");
    assert!(
        matches!(error, SchedulerError::StepOutOfRange { step: 4, steps: 4 }),
        "{error}"
    );
}
