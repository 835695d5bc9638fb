//! Loads libtorch's CUDA backend at run time.
//!
//! The binary links `libtorch_cuda.so` with `--as-needed` and references none of its symbols,
//! so the linker drops it and libtorch never registers its CUDA device type. Opening it
//! ourselves (globally, before any tensor work) restores that on GPU machines, while the
//! same binary still starts on CPU-only machines, where the library or its CUDA dependencies
//! are missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CUDA_LIBRARY: &str = "libtorch_cuda.so";

/// What [`load_backend`] found.
#[derive(Debug, Clone)]
pub struct CudaStatus {
    /// The library that was loaded, if any.
    pub loaded: Option<PathBuf>,
    /// Why each candidate failed, when none loaded.
    pub errors: Vec<String>,
    /// `tch::Cuda::is_available()` after the attempt.
    pub available: bool,
    pub device_count: usize,
}

/// Opens libtorch's CUDA backend once per process and reports what libtorch then sees. Call it
/// before any tensor work; later calls return the first result. `expect_gpu` only decides how
/// loudly a failure is logged.
pub fn load_backend(expect_gpu: bool) -> &'static CudaStatus {
    static STATUS: OnceLock<CudaStatus> = OnceLock::new();
    STATUS.get_or_init(|| {
        let mut errors = Vec::new();
        let loaded = candidates()
            .into_iter()
            .find_map(|candidate| match open_global(&candidate) {
                Ok(()) => Some(candidate),
                Err(e) => {
                    errors.push(format!("{}: {e}", candidate.display()));
                    None
                }
            });
        let status = CudaStatus {
            loaded,
            errors,
            available: tch::Cuda::is_available(),
            device_count: usize::try_from(tch::Cuda::device_count()).unwrap_or(0),
        };
        log_status(&status, expect_gpu);
        status
    })
}

fn log_status(status: &CudaStatus, expect_gpu: bool) {
    match &status.loaded {
        Some(path) => tracing::debug!("loaded libtorch's CUDA backend from {}", path.display()),
        None if expect_gpu => tracing::warn!(
            "could not load libtorch's CUDA backend, so inference runs on the CPU; install the \
             CUDA 13 libraries libtorch needs with `scripts/setup.sh --cuda` (or put cuBLAS, \
             cuDNN, … where the loader finds them): {}",
            status.errors.join("; ")
        ),
        None => tracing::debug!(
            "libtorch's CUDA backend not loaded (expected without a GPU): {}",
            status.errors.join("; ")
        ),
    }
    tracing::info!(
        cuda_backend_loaded = status.loaded.is_some(),
        cuda_available = status.available,
        cuda_devices = status.device_count,
        "libtorch CUDA: {}",
        if status.available {
            "available"
        } else {
            "not available"
        }
    );
}

/// Where to look, best first: beside the libtorch already loaded, then the libtorch this was
/// built against (or `LIBTORCH` now), then the loader's own search path (rpath, ld.so.conf).
fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = loaded_libtorch_dir() {
        dirs.push(dir);
    }
    if let Some(dir) = option_env!("INFERMINE_LIBTORCH_LIB") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(root) = std::env::var_os("LIBTORCH") {
        dirs.push(Path::new(&root).join("lib"));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let path = dir.join(CUDA_LIBRARY);
        if path.is_file() && !out.contains(&path) {
            out.push(path);
        }
    }
    if out.is_empty() {
        out.push(PathBuf::from(CUDA_LIBRARY));
    }
    out
}

/// The folder of the `libtorch_cpu.so` mapped into this process.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    libtorch_dir_in_maps(&maps)
}

fn libtorch_dir_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| Path::new(path).parent().map(Path::to_path_buf))
}

#[expect(
    unsafe_code,
    reason = "dlopen runs the library's initializers; there is no safe way to load libtorch_cuda"
)]
fn open_global(path: &Path) -> Result<(), libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: libtorch_cuda's initializers only register CUDA kernels and hooks with the
    // libtorch already in this process (the same build, found beside it first). Nothing has
    // used tch yet, and no other thread touches libtorch while this runs at start-up.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL)? };
    // Unloading would leave dangling registrations inside libtorch: keep it for the process.
    std::mem::forget(library);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_folder_is_found_in_the_process_maps() {
        let maps = "7f00-7f10 r-xp 00000000 08:01 123 /opt/torch/lib/libtorch_cpu.so\n\
                    7f20-7f30 r-xp 00000000 08:01 124 /usr/lib/libc.so.6\n";
        assert_eq!(
            libtorch_dir_in_maps(maps),
            Some(PathBuf::from("/opt/torch/lib"))
        );
        assert_eq!(libtorch_dir_in_maps("7f00-7f10 r-xp 0 0 0\n"), None);
    }

    #[test]
    fn loading_never_fails_the_process() {
        let status = load_backend(false);
        assert!(status.loaded.is_some() || !status.errors.is_empty());
        assert!(status.available || status.device_count == 0);
    }
}
