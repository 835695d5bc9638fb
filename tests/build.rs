//! The end-to-end tests call the agent's library (its uploader), which links libtorch: embed
//! where libtorch lives so the test binaries start without LD_LIBRARY_PATH, as the agent does.

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
    }
}
