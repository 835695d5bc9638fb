//! The diffusion engine (SD 1.5, SDXL, Flux). Each component is matched against the reference
//! implementation and loads both the Hugging Face (diffusers) layout and the single-file
//! checkpoint layout miners download.

pub mod clip;
pub mod clip_tokenizer;
pub mod engine;
pub mod flux;
pub mod lora;
pub mod nf4;
pub mod pipeline;
pub mod scheduler;
pub mod synth;
pub mod t5;
pub mod unet;
pub mod vae;
pub mod weights;
