//! `compose/init-env.sh`, the one command that makes a compose stack's
//! `.env`: every placeholder secret of `.env.example` becomes 32 random bytes
//! in hex, each different, in a file only its owner reads; an existing file
//! is kept unless `--force` is given; a bad public URL is refused.

mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn init_env(target: &Path, extra: &[&str]) -> Output {
    Command::new(support::repo_root().join("compose/init-env.sh"))
        .arg("--file")
        .arg(target)
        .args(extra)
        .output()
        .expect("run compose/init-env.sh")
}

fn secrets(text: &str) -> Vec<(String, String)> {
    let template = std::fs::read_to_string(support::repo_root().join("compose/.env.example"))
        .expect("read .env.example");
    let placeholders: HashSet<&str> = template
        .lines()
        .filter(|l| l.contains("=change-me"))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(placeholders.len() >= 4, "{template}");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| placeholders.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn init_env_writes_fresh_private_secrets_and_keeps_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(".env");
    let made = init_env(&target, &["--public-url", "https://desk.example.net/"]);
    assert!(made.status.success(), "{made:?}");
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(!text.contains("=change-me"), "{text}");
    assert!(text.contains("\nDESKGATE_PUBLIC_URL=https://desk.example.net\n"));
    // Browsers find the stack's TURN server where they find the gate.
    assert!(
        text.contains(
            "\nDESKGATE_TURN_URLS=turn:desk.example.net:3478?transport=udp,\
             turn:desk.example.net:3478?transport=tcp\n"
        ),
        "{text}"
    );
    let first = secrets(&text);
    let values: HashSet<&str> = first.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values.len(), first.len(), "every secret differs");
    for (key, value) in &first {
        assert!(
            value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()),
            "{key} is not 32 bytes in hex"
        );
    }
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(
        first.iter().all(|(_, v)| !stderr.contains(v.as_str())),
        "a secret was printed"
    );

    let again = init_env(&target, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        text,
        "kept as it was"
    );

    let forced = init_env(&target, &["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    let second = secrets(&std::fs::read_to_string(&target).unwrap());
    assert!(
        first.iter().zip(&second).all(|(a, b)| a.1 != b.1),
        "--force makes new secrets"
    );

    let refused = init_env(
        &dir.path().join("other.env"),
        &["--public-url", "desk.example.net"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(!dir.path().join("other.env").exists());
}
