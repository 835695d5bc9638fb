//! Anti-cheat review.
//!
//! This folder will hold the asynchronous review: sampling completed jobs, re-running them on
//! trusted validators and judging the miner's output against the re-run. [`similarity`] judges
//! an image against its re-render.

pub mod cases;
pub mod similarity;
