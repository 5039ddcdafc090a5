//! Replays the fuzz corpus kept in `fuzz/corpus/<target>/` (what fuzzing runs kept,
//! minimized) and `fuzz/seeds/<target>/` (hand-written seeds and the inputs of bugs found)
//! through the same entry points (see `scripts/fuzz.sh`), so that every input is checked
//! again on each test run, without the fuzzer.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 7] = [
    ("request_body", cdpgate::fuzzing::request_body),
    ("token", cdpgate::fuzzing::token),
    ("discovery", cdpgate::fuzzing::discovery),
    ("frames", cdpgate::fuzzing::frames),
    ("instruction", cdpgate::fuzzing::instruction),
    ("context_filter", cdpgate::fuzzing::context_filter),
    ("cdp_tap", cdpgate::fuzzing::cdp_tap),
];

#[test]
fn every_kept_input_still_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in TARGETS {
        let mut inputs = Vec::new();
        for kind in ["corpus", "seeds"] {
            let dir = root.join(kind).join(name);
            let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            inputs.extend(files.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
        assert!(!inputs.is_empty(), "no corpus for {name}");
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            if std::panic::catch_unwind(|| target(&bytes)).is_err() {
                panic!("{name} fails on {}", input.display());
            }
        }
    }
}
