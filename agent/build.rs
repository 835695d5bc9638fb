//! Embeds where libtorch's shared libraries live, so the agent (and its tests) start without
//! LD_LIBRARY_PATH: the libtorch it was built against, then beside the binary and `../lib`
//! for packaged installs.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    if let Some(root) = std::env::var_os("LIBTORCH") {
        let lib = Path::new(&root).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // Lets the agent find libtorch_cuda.so there even when the loader cannot.
        println!("cargo:rustc-env=INFERMINE_LIBTORCH_LIB={}", lib.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
}
