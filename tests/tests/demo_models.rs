//! The registry's pins for the demo models are what `infermine-agent models synth` writes,
//! byte for byte: every demo file is pinned, and the synthesizer's output has exactly those
//! sizes and SHA-256. If the synthesizer changes, this names the file and its new pin.

use infermine_agent::engine::demo::{demo_models, synth};
use infermine_server::registry::Registry;
use sha2::{Digest, Sha256};

#[test]
fn registry_pins_match_the_synthesizer() {
    let registry = Registry::builtin();
    let out = tempfile::tempdir().expect("temp dir");
    let mut problems = Vec::new();
    for id in demo_models() {
        let spec = registry
            .get(id)
            .unwrap_or_else(|| panic!("demo model {id} is missing from server/models.toml"));
        let dir = synth(id, out.path()).expect("synth");
        let mut written = files_under(&dir, &dir);
        written.sort();
        let mut listed: Vec<String> = spec.files.iter().map(|f| f.name.clone()).collect();
        listed.sort();
        assert_eq!(
            listed, written,
            "{id}: the registry lists exactly the files synth writes"
        );
        for file in &spec.files {
            let bytes = std::fs::read(dir.join(&file.name)).expect("read");
            let sha = hex::encode(Sha256::digest(&bytes));
            if file.sha256.as_deref() != Some(sha.as_str())
                || file.size_bytes != Some(bytes.len() as u64)
            {
                problems.push(format!(
                    "{id}/{}: registry has size {:?} sha256 {:?}; synth writes size_bytes = {} and sha256 = \"{sha}\"",
                    file.name,
                    file.size_bytes,
                    file.sha256,
                    bytes.len()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "update server/models.toml:\n{}",
        problems.join("\n")
    );
}

/// Every file under `dir`, as paths relative to `root` with `/` separators.
fn files_under(root: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(files_under(root, &path));
        } else {
            let relative = path.strip_prefix(root).expect("under root");
            files.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    files
}
