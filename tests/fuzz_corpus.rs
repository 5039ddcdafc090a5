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

/// A small deterministic generator (xorshift), so a failure here replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The `request_body` and `token` properties over inputs made here (without cargo-fuzz,
/// which needs nightly): bodies of the fields every validator reads with values at and
/// past their limits, and random splices into a token the broker signed.
#[test]
fn request_body_properties_hold_on_generated_bodies() {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let values = [
        "0",
        "1",
        "-1",
        "1.5",
        "600.0",
        "86400",
        "86401",
        "1e23",
        "\"600\"",
        "null",
        "true",
        "[]",
        "{}",
        "\"\"",
        "\"a\\r\\nX-Injected: 1\"",
        "\"Europe/Berlin\"",
        "\"en-US\"",
        "\"../../etc/passwd\"",
        "\"550E8400-E29B-41D4-A716-446655440000\"",
        "\"ws://127.0.0.1:9/devtools/browser/x\"",
        "{\"width\": 800, \"height\": 600}",
        "{\"width\": 1, \"height\": 99999}",
        "{\"live_url\": \"http://evil\", \"live_url_read_only\": 1, \"k\": \"v\"}",
        "{\"server\": \"http://x:1\", \"username\": \"u\", \"password\": \"p\"}",
        "\"context\"",
        "\"process\"",
    ];
    let fields = [
        "ttl",
        "metadata",
        "screen_config",
        "profile_id",
        "cdp_url",
        "persist_changes",
        "user_agent",
        "locale",
        "timezone",
        "idle_timeout",
        "proxy",
        "isolation",
        "record",
        "log_cdp",
        "action",
    ];
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(16 * 1024));
    for _ in 0..20_000 {
        let mut body = Vec::new();
        for _ in 0..rng.below(6) {
            let value = if rng.below(50) == 0 {
                big.as_str()
            } else {
                rng.pick(&values)
            };
            body.push(format!("\"{}\": {value}", rng.pick(&fields)));
        }
        cdpgate::fuzzing::request_body(format!("{{{}}}", body.join(", ")).as_bytes());
        // And as a query string.
        let query: Vec<String> = (0..rng.below(4))
            .map(|_| format!("{}={}", rng.pick(&fields), String::from_utf8_lossy(&rng.bytes(3))))
            .collect();
        cdpgate::fuzzing::request_body(query.join("&").as_bytes());
    }
}

#[test]
fn token_properties_hold_on_spliced_tokens() {
    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=";
    for _ in 0..3_000 {
        let n = rng.below(12);
        let mut input = rng.bytes(2);
        // Mostly base64url text (what a token is made of), sometimes any bytes.
        if rng.below(4) == 0 {
            input.extend(rng.bytes(n));
        } else {
            input.extend((0..n).map(|_| *rng.pick(alphabet)));
        }
        cdpgate::fuzzing::token(&input);
    }
}

/// `scripts/fuzz.sh` fails on every way a run can go wrong, and only then: a build that
/// fails, a crash, a timeout, an out-of-memory, a leak (each as libFuzzer names its input),
/// told apart from a clean run. A stand-in `cargo` plays cargo-fuzz in a copy of the tree.
#[test]
fn the_fuzz_script_fails_on_anything_but_a_clean_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("scripts")).unwrap();
    std::fs::copy(root.join("scripts/fuzz.sh"), tree.path().join("scripts/fuzz.sh")).unwrap();
    let bin = tree.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // `cargo fuzz run TARGET …`: does what FUZZ_STUB says.
    let stub = r#"#!/usr/bin/env bash
target="$3"
case "$FUZZ_STUB" in
  clean) echo "Done 1000 runs in 1 second(s)"; exit 0 ;;
  build) echo "error[E0425]: cannot find value in this scope"; exit 101 ;;
  *) echo "==1== ERROR: libFuzzer: $FUZZ_STUB"; touch "fuzz/artifacts/$target/$FUZZ_STUB-0123abcd"
     exit "${FUZZ_STUB_STATUS:-1}" ;;
esac
"#;
    for name in ["cargo", "cargo-fuzz"] {
        std::fs::write(bin.join(name), stub).unwrap();
        std::fs::set_permissions(
            bin.join(name),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let run = |mode: &str, status: &str| {
        std::process::Command::new("bash")
            .arg(tree.path().join("scripts/fuzz.sh"))
            .args(["1", "token"])
            .env("PATH", &path)
            .env("FUZZ_STUB", mode)
            .env("FUZZ_STUB_STATUS", status)
            .output()
            .unwrap()
    };
    let clean = run("clean", "0");
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    for mode in ["build", "crash", "timeout", "oom", "leak"] {
        // A failure shows in the exit status; the input left behind alone counts too.
        for status in ["1", "0"] {
            let out = run(mode, status);
            assert!(
                !out.status.success(),
                "{mode} (exit {status}) passed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    // An input left by an earlier run is not this run's finding.
    let again = run("clean", "0");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}
