//! A model as the registry describes it: identity, points multiplier, hardware needs, request
//! limits, timing and files. Built only by validating a registry file (see `schema`).

use infermine_protocol::ModelKind;
use serde::{Deserialize, Serialize};

/// One model the network serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    /// Stable id used in requests, jobs and the ledger, e.g. `dolphin-2.9-llama3-8b`.
    pub id: String,
    pub kind: ModelKind,
    /// Name shown in the portal.
    pub display_name: String,
    /// Architecture: decides the engine an agent runs and the samplers it accepts.
    pub family: Family,
    /// Scales the base points of a job (seed rules). Only synthetic models have 0.
    pub points_multiplier: f64,
    /// Still served, but on its way out (the seed's "to be discontinued").
    pub discontinued: bool,
    /// A demo model: random weights the agent synthesizes (`synth:` file URLs), so a fresh
    /// install runs end to end on a CPU. Its text is gibberish; production registries leave
    /// demo models out.
    pub demo: bool,
    /// Device memory the model needs, in MiB (system memory for a CPU device).
    pub min_vram_mb: u64,
    /// GPUs named as the minimum, as in the seed: any of these or a higher tier.
    pub min_gpu: Vec<String>,
    /// Lowest tier among `min_gpu`; 0 when there is no GPU minimum.
    pub min_gpu_tier: u32,
    /// Whether the CPU device may run it (only for models with no GPU minimum).
    pub allow_cpu: bool,
    pub limits: Limits,
    /// Full points up to this latency...
    pub target_latency_ms: u64,
    /// ...falling to none here; the lease of an assignment ends here too.
    pub deadline_ms: u64,
    /// Jobs one slot may run at once.
    pub slot_concurrency: u32,
    /// What an agent downloads and verifies before it may load the model.
    pub files: Vec<ModelFile>,
    /// The LoRA an image model applies on its base checkpoint: the name of one of `files`.
    /// Only models with one accept a LoRA strength (`lora_scale`) in requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_file: Option<String>,
}

impl ModelSpec {
    /// Whether every file has its SHA-256 and size, so an agent may load the model.
    pub fn is_pinned(&self) -> bool {
        self.files.iter().all(ModelFile::is_pinned)
    }

    /// Files still missing their SHA-256 or size.
    pub fn unpinned_files(&self) -> impl Iterator<Item = &ModelFile> {
        self.files.iter().filter(|file| !file.is_pinned())
    }
}

/// The architecture family of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Stable Diffusion 1.x checkpoints and their LoRAs.
    Sd15,
    /// Stable Diffusion XL checkpoints and their LoRAs.
    Sdxl,
    /// Flux.1 transformers.
    Flux,
    Llama3,
    Mistral,
    Mixtral,
    /// The built-in synthetic test engine.
    Synthetic,
}

impl Family {
    /// The name used in the registry file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sd15 => "sd15",
            Self::Sdxl => "sdxl",
            Self::Flux => "flux",
            Self::Llama3 => "llama3",
            Self::Mistral => "mistral",
            Self::Mixtral => "mixtral",
            Self::Synthetic => "synthetic",
        }
    }

    /// The kind of model this family makes.
    pub fn kind(self) -> ModelKind {
        match self {
            Self::Sd15 | Self::Sdxl | Self::Flux => ModelKind::Image,
            Self::Llama3 | Self::Mistral | Self::Mixtral => ModelKind::Llm,
            Self::Synthetic => ModelKind::Synthetic,
        }
    }

    /// Image sides are multiples of this: the VAE's 8 pixels per latent cell, and for Flux
    /// also its 2×2 latent patches (16). 1 for non-image families.
    pub fn side_multiple(self) -> u32 {
        match self {
            Self::Sd15 | Self::Sdxl => 8,
            Self::Flux => 16,
            Self::Llama3 | Self::Mistral | Self::Mixtral | Self::Synthetic => 1,
        }
    }

    /// Whether requests may carry a negative prompt (Flux.1-dev is guidance-distilled and
    /// runs without classifier-free guidance, so it has no negative side).
    pub fn takes_negative_prompt(self) -> bool {
        !matches!(self, Self::Flux)
    }

    /// Sampler names a request may ask for. UNet models take the classic samplers; Flux is
    /// a flow-matching model and only has its Euler flow sampler. Empty for non-image models.
    pub fn schedulers(self) -> &'static [&'static str] {
        match self {
            Self::Sd15 | Self::Sdxl => &["euler", "euler_a", "dpmpp_2m_karras", "ddim"],
            Self::Flux => &["flow_euler"],
            Self::Llama3 | Self::Mistral | Self::Mixtral | Self::Synthetic => &[],
        }
    }
}

/// What a request to a model may ask for, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limits {
    Image(ImageLimits),
    Llm(LlmLimits),
    Synthetic(SyntheticLimits),
}

/// Limits of a text-to-image model. Sides are also at least 64 and multiples of 8 (the
/// latent space works in 8-pixel blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Caps width × height below max_width × max_height where the full square would not
    /// finish within the deadline.
    pub max_pixels: u64,
    pub max_steps: u32,
    /// Per prompt (positive and negative each).
    pub max_prompt_chars: u32,
}

/// Limits of a chat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LlmLimits {
    /// The model's context window in tokens (prompt plus generation); the agent enforces it.
    pub context_tokens: u32,
    /// Most tokens one request may generate.
    pub max_tokens: u32,
    /// Total characters over all messages: the coordinator cannot tokenize, so this is its
    /// cheap stand-in for the context window.
    pub max_prompt_chars: u32,
}

/// Limits of the synthetic test engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SyntheticLimits {
    pub max_output_bytes: u32,
    pub max_delay_ms: u32,
    pub max_stream_tokens: u32,
}

/// One file of a model, as an agent downloads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path inside the model's folder, e.g. `model-00001-of-00004.safetensors`.
    pub name: String,
    /// An https:// download, or `synth:<recipe>` for a demo model's file that the agent
    /// makes itself (`infermine-agent models synth`).
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Lowercase hex SHA-256 of the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ModelFile {
    /// Whether both the SHA-256 and the size are known. Agents refuse to load an unpinned
    /// file: without a hash they could not tell a tampered download from the real one, and
    /// the anti-cheat `challenge` has nothing to compare against. The registry accepts
    /// unpinned files so a model can be listed before an operator has filled in the values.
    pub fn is_pinned(&self) -> bool {
        self.sha256.is_some() && self.size_bytes.is_some()
    }
}
