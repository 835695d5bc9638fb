//! The diffusion engine (SD 1.5, SDXL, Flux). So far, each matched against the reference
//! implementation and loading both the Hugging Face layout and the single-file checkpoint
//! layout: the samplers, the CLIP text encoders, the SD 1.5 / SDXL UNet and the VAE decoder.
//! Flux's MMDiT and T5 encoder, nf4 weights, LoRA merging and the pipelines come next.

pub mod clip;
pub mod scheduler;
pub mod unet;
pub mod vae;
pub mod weights;
