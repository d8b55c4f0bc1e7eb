//! The README's configuration table is the self-hoster's reference: every
//! setting the program reads must be in it.

use deskgate::config::{ENV_PREFIX, KEYS};

#[test]
fn every_setting_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<String> = KEYS
        .iter()
        .map(|key| format!("`{ENV_PREFIX}{}", key.name))
        .filter(|name| !readme.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not document {missing:?}"
    );
}
