//! The diffusion engine (SD 1.5, SDXL, Flux). So far: the samplers (matched against diffusers)
//! and the CLIP text encoders (matched against transformers, from Hugging Face, SD 1.5 and SDXL
//! single-file layouts); the UNet, MMDiT, T5, VAE and the pipelines come next.

pub mod clip;
pub mod scheduler;
