//! The diffusion engine (SD 1.5, SDXL, Flux). So far: the samplers, matched against diffusers;
//! the text encoders, UNet, MMDiT and VAE come next.

pub mod scheduler;
