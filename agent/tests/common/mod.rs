//! Helpers shared by the diffusion golden tests: where a component's fixtures live, its
//! fixture weights, and the golden tensors the reference implementation recorded.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use infermine_agent::engine::diffusion::weights::SafetensorsFiles;
use tch::Tensor;

/// The fixtures of one component, in `tests/fixtures/diffusion/<component>/`.
#[derive(Debug, Clone, Copy)]
pub struct Fixtures(pub &'static str);

impl Fixtures {
    pub fn path(self, name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diffusion")
            .join(self.0)
            .join(name)
    }

    /// The tensors of one fixture file, in memory.
    pub fn files(self, name: &str) -> SafetensorsFiles {
        SafetensorsFiles::read(&[&self.path(name)]).expect("fixture weights")
    }

    /// `<model>.<what>` from the component's `golden.safetensors`.
    pub fn golden(self, model: &str, what: &str) -> Tensor {
        let name = format!("{model}.{what}");
        Tensor::read_safetensors(self.path("golden.safetensors"))
            .expect("golden.safetensors")
            .into_iter()
            .find_map(|(n, t)| (n == name).then_some(t))
            .unwrap_or_else(|| panic!("golden `{name}` missing"))
    }
}
