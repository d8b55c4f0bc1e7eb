//! Fuzzes reading the configuration (src/config/): `config::load_text`,
//! the pure core of `config::load`, on arbitrary TOML text (what
//! `RawSettings::gather_text` reads a `--config` file with) and an
//! arbitrary stand-in environment, for both roles: every part's parsing
//! (`parse.rs` and one file per part), the security posture, and the
//! redacted view `config check` prints. Nothing reads the real
//! environment or the filesystem.
//!
//! Input: byte 0 picks the role (even: `serve`, odd: `launcher`; one role
//! an input halves the work, so 10^7 runs fit in a long run), then the
//! file's text, then optionally a NUL byte and `NAME=value` lines, the
//! environment (`DESKGATE_*` names count, as in the real one).
//!
//! What must hold: no input panics or hangs; a configuration that did not
//! build has at least one problem; every problem names the file or a
//! `DESKGATE_*` setting of `KEYS`; `config check`'s view lists every key.
#![no_main]

use deskgate::config::{ENV_PREFIX, KEYS, Role, load_text};
use libfuzzer_sys::fuzz_target;

/// The name file problems carry.
const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let [selector, data @ ..] = data else {
        return;
    };
    let role = if selector % 2 == 0 {
        Role::Serve
    } else {
        Role::Launcher
    };
    let text = String::from_utf8_lossy(data);
    let (file, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let loaded = load_text(Some((FILE, file)), env, role);
    assert!(
        loaded.config.is_some() || !loaded.problems.is_empty(),
        "no configuration and no problem"
    );
    for problem in &loaded.problems {
        let known = problem.variable == FILE
            || problem
                .variable
                .strip_prefix(ENV_PREFIX)
                .is_some_and(|name| KEYS.iter().any(|key| key.name == name));
        assert!(known, "a problem names `{}`", problem.variable);
    }
    assert_eq!(loaded.raw.redacted_entries().len(), KEYS.len());
    let _ = loaded.into_result();
});
