//! The diffusion engine (SD 1.5, SDXL, Flux). So far: the samplers (matched against diffusers),
//! the CLIP text encoders (matched against transformers) and the VAE decoder (matched against
//! diffusers), each loading the Hugging Face layout and the single-file checkpoint layouts; the
//! UNet, MMDiT, T5 and the pipelines come next.

pub mod clip;
pub mod scheduler;
pub mod vae;
