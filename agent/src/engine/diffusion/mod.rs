//! The diffusion engine (SD 1.5, SDXL, Flux): samplers first; the models come next.

pub mod scheduler;
