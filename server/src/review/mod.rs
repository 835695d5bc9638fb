//! Anti-cheat review.
//!
//! [`worker`] is the reviewer: it runs cheap checks on every completed job, audits a sample
//! (adaptive per GPU, see [`store::Trust`]) by re-executing it on a trusted validator, and
//! judges the pair: images with [`similarity`], LLM completions with [`teacher`] forcing.
//! A failed check opens one of the [`cases`]; the [`config::Policy`] may slash at once.

pub mod cases;
pub mod challenge;
pub mod config;
pub mod policy;
pub mod probation;
pub mod similarity;
pub mod store;
pub mod teacher;
pub mod worker;
