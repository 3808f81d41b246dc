//! Replays every committed fuzz input on the stable toolchain: the corpora that libFuzzer grew
//! (`corpus/<target>/`) and the inputs that once found a bug (`regressions/<target>/`), so a
//! change that breaks a property any of them reaches fails `cargo test`, with no nightly.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            all.extend(entries.map(|e| e.expect("a readable entry").path()).filter(|p| p.is_file()));
        }
    }
    all.sort();
    all
}

fn replay(target: &str, run: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no committed inputs for {target}: run the fuzzer and commit its corpus");
    for path in &inputs {
        let data = std::fs::read(path).expect("a readable input");
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let why =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{target}: {} fails: {}", path.display(), why.unwrap_or_default());
        }
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            replay(stringify!($name), switchboard_fuzz::$name::run);
        }
    )*};
}

targets!(ws_frames, http_head, client_json, client_binary, mesh_stream, log_recovery, session_ops, sequencer_ops);
