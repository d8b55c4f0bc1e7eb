//! Raw settings: the text of every setting before parsing, gathered from the
//! optional TOML file and then the environment, with where each came from;
//! and redaction, which is how `config check` shows them.
//!
//! Invariants: the environment wins over the file; only names in
//! [`KEYS`] are kept (unknown `DESKGATE_*` variables are tolerated, unknown
//! file keys are problems); a secret or a URL's credentials never leave here
//! unredacted through [`RawSettings::redacted_entries`]. A secret may also
//! come from a file named by `DESKGATE_<KEY>_FILE` (Docker secrets), read by
//! [`RawSettings::gather`] only; setting both forms is a problem.

use std::collections::BTreeMap;
use std::path::Path;

use url::Url;

use super::keys::{Exposure, KEYS, Source, key_info};
use super::{ENV_PREFIX, Problem};

/// The settings as text, before parsing, with where each came from.
#[derive(Clone, Debug, Default)]
pub struct RawSettings {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl RawSettings {
    /// Gathers settings from an optional TOML file and then the environment
    /// (`env` is normally `std::env::vars()`); problems with the file itself
    /// are returned alongside. An empty environment variable counts as unset
    /// (compose files pass optional settings as `${NAME:-}`).
    pub fn gather(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Self, Vec<Problem>) {
        let (env, file_problems) = secrets_from_files(env);
        let (raw, mut problems) = match file {
            None => Self::gather_text(None, env),
            Some(path) => {
                let name = path.display().to_string();
                match std::fs::read_to_string(path) {
                    Ok(text) => Self::gather_text(Some((&name, &text)), env),
                    Err(err) => {
                        let (raw, mut problems) = Self::gather_text(None, env);
                        problems.insert(
                            0,
                            Problem {
                                variable: name,
                                message: format!("cannot read the config file: {err}"),
                            },
                        );
                        (raw, problems)
                    }
                }
            }
        };
        problems.extend(file_problems);
        (raw, problems)
    }

    /// [`gather`](Self::gather) with the file already read: `file` is its
    /// name (which file problems name) and its text. Touches neither the
    /// filesystem nor the process environment.
    pub fn gather_text(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Self, Vec<Problem>) {
        let mut raw = Self::default();
        let mut problems = Vec::new();
        if let Some((name, text)) = file {
            raw.read_toml(name, text, &mut problems);
        }
        for (name, value) in env {
            let Some(short) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Unknown DESKGATE_* variables are tolerated: test harnesses and
            // scripts share the prefix.
            if let Some(key) = key_info(short)
                && !value.trim().is_empty()
            {
                raw.values.insert(key.name, (value, Source::Env));
            }
        }
        (raw, problems)
    }

    fn read_toml(&mut self, file: &str, text: &str, problems: &mut Vec<Problem>) {
        let file_problem = |message: String| Problem {
            variable: file.to_string(),
            message,
        };
        let table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(err) => {
                problems.push(file_problem(format!("not valid TOML: {err}")));
                return;
            }
        };
        for (name, value) in table {
            let upper = name.to_ascii_uppercase();
            let Some(key) = key_info(&upper) else {
                problems.push(file_problem(format!(
                    "unknown setting `{name}` (settings are the DESKGATE_* names in lower case without the prefix, e.g. `bind`)"
                )));
                continue;
            };
            match toml_value_as_text(&value) {
                Some(text) => {
                    self.values.insert(key.name, (text, Source::File));
                }
                None => problems.push(file_problem(format!(
                    "`{name}` must be a string, number, boolean or list of strings"
                ))),
            }
        }
    }

    /// Sets one value as if it came from the environment (used by tests and
    /// by command-line overrides).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let key = key_info(name).unwrap_or_else(|| panic!("unknown setting {name}"));
        self.values.insert(key.name, (value.into(), Source::Env));
    }

    /// The value `name` was given, if any (its default is not applied here).
    pub(super) fn get(&self, name: &'static str) -> Option<&str> {
        self.values.get(name).map(|(v, _)| v.as_str())
    }

    /// Every known setting with its value as `config check` shows it —
    /// secrets redacted — and where it came from.
    pub fn redacted_entries(&self) -> Vec<(String, String, Source)> {
        KEYS.iter()
            .map(|key| {
                let (shown, source) = match self.values.get(key.name) {
                    Some((value, source)) => (redact(key.exposure, value), *source),
                    None => match key.default {
                        Some(default) => (default.to_string(), Source::Default),
                        None => ("<unset>".to_string(), Source::Default),
                    },
                };
                (format!("{ENV_PREFIX}{}", key.name), shown, source)
            })
            .collect()
    }
}

/// Replaces each `DESKGATE_<KEY>_FILE` naming a secret setting by
/// `DESKGATE_<KEY>` holding the file's text (one trailing newline dropped), as
/// Docker secrets are mounted. A file that cannot be read, a `_FILE` for a
/// setting that is not secret, or both forms set, is a problem; the
/// problem names the file, never its content.
fn secrets_from_files(
    env: impl IntoIterator<Item = (String, String)>,
) -> (Vec<(String, String)>, Vec<Problem>) {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let set = |name: &str| env.iter().any(|(n, v)| n == name && !v.trim().is_empty());
    let mut out = Vec::with_capacity(env.len());
    let mut problems = Vec::new();
    for (name, value) in &env {
        let Some(key) = name
            .strip_prefix(ENV_PREFIX)
            .and_then(|short| short.strip_suffix("_FILE"))
            .and_then(key_info)
        else {
            out.push((name.clone(), value.clone()));
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        let target = format!("{ENV_PREFIX}{}", key.name);
        let problem = |message: String| Problem {
            variable: name.clone(),
            message,
        };
        if key.exposure == Exposure::Plain {
            problems.push(problem(format!(
                "only secret settings are read from files; set {target} itself"
            )));
        } else if set(&target) {
            problems.push(problem(format!("set {target} or {name}, not both")));
        } else {
            match std::fs::read_to_string(value.trim()) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    out.push((target, text.to_string()));
                }
                Err(err) => problems.push(problem(format!(
                    "cannot read the secret file {}: {err}",
                    value.trim()
                ))),
            }
        }
    }
    (out, problems)
}

fn toml_value_as_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        _ => None,
    }
}

fn redact(exposure: Exposure, value: &str) -> String {
    match exposure {
        Exposure::Plain => value.to_string(),
        Exposure::Secret => "<redacted>".to_string(),
        Exposure::CredentialUrl => redact_url(value),
    }
}

/// Shows a URL without anything that could be a credential: user info, path
/// (RPC providers put API keys there) and query are replaced.
pub fn redact_url(value: &str) -> String {
    match Url::parse(value) {
        Ok(url) => {
            let mut shown = format!("{}://", url.scheme());
            if !url.username().is_empty() || url.password().is_some() {
                shown.push_str("<redacted>@");
            }
            shown.push_str(url.host_str().unwrap_or(""));
            if let Some(port) = url.port() {
                shown.push_str(&format!(":{port}"));
            }
            // A database name is not a credential; an RPC provider's path often is.
            let is_database = matches!(url.scheme(), "postgres" | "postgresql");
            let has_path = !matches!(url.path(), "" | "/");
            if is_database && has_path {
                shown.push_str(url.path());
            }
            if (has_path && !is_database) || url.query().is_some() {
                shown.push_str("/<redacted>");
            }
            shown
        }
        Err(_) => "<redacted: not a valid URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{STRONG, env};
    use crate::config::{Confirmations, LauncherKind, Role, load};

    #[test]
    fn the_file_is_read_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deskgate.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9000\"\nchain_id = 31337\nconfirmations = 3\nlauncher_urls = [\"http://a:1\", \"http://b:2\"]\n",
        )
        .unwrap();
        let loaded = load(
            Some(&path),
            env(&[
                ("DESKGATE_CONFIRMATIONS", "5"),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
            ]),
            Role::Serve,
        );
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let config = loaded.config.unwrap();
        assert_eq!(config.server.bind.port(), 9000);
        assert_eq!(config.chain.id, 31337);
        assert_eq!(config.chain.confirmations, Confirmations::Blocks(5));
        let LauncherKind::Remote(urls) = &config.launcher.kind else {
            panic!("launcher_urls in the file must mean remote launchers");
        };
        assert_eq!(urls.len(), 2);
    }

    #[test]
    fn an_empty_environment_variable_counts_as_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deskgate.toml");
        std::fs::write(&path, "chain_id = 31337\n").unwrap();
        let loaded = load(
            Some(&path),
            env(&[
                ("DESKGATE_TOKEN_ADDRESS", ""),
                ("DESKGATE_TLS_CERT", " "),
                ("DESKGATE_CHAIN_ID", ""),
            ]),
            Role::Serve,
        );
        assert!(
            !loaded
                .problems
                .iter()
                .any(|p| p.variable.contains("TOKEN_ADDRESS")),
            "{:?}",
            loaded.problems
        );
        let config = loaded.config.expect("empty values are not problems");
        assert_eq!(
            config.chain.id, 31337,
            "an empty variable overrode the file"
        );
        assert!(!config.is_tls());
    }

    #[test]
    fn a_secret_comes_from_its_file_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("launcher_token");
        std::fs::write(&token, format!("{STRONG}\n")).unwrap();
        let path = token.display().to_string();
        let (raw, problems) =
            RawSettings::gather(None, env(&[("DESKGATE_LAUNCHER_TOKEN_FILE", &path)]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(raw.get("LAUNCHER_TOKEN"), Some(STRONG));

        let (_, problems) = RawSettings::gather(
            None,
            env(&[
                ("DESKGATE_LAUNCHER_TOKEN_FILE", &path),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
                ("DESKGATE_BIND_FILE", &path),
                ("DESKGATE_ADMIN_TOKEN_FILE", "/nonexistent/admin_token"),
            ]),
        );
        let shown = format!("{problems:?}");
        assert_eq!(problems.len(), 3, "{shown}");
        assert!(shown.contains("not both"), "{shown}");
        assert!(shown.contains("only secret settings"), "{shown}");
        assert!(shown.contains("/nonexistent/admin_token"), "{shown}");
        assert!(!shown.contains(STRONG), "a secret leaked: {shown}");
    }

    #[test]
    fn unknown_file_keys_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deskgate.toml");
        std::fs::write(&path, "bnid = \"127.0.0.1:9000\"\n").unwrap();
        let loaded = load(Some(&path), env(&[]), Role::Serve);
        assert_eq!(loaded.problems.len(), 1);
        assert!(
            loaded.problems[0]
                .message
                .contains("unknown setting `bnid`")
        );
    }

    #[test]
    fn redaction_hides_every_credential() {
        let mut raw = RawSettings::default();
        raw.set("ADMIN_TOKEN", STRONG);
        raw.set(
            "DATABASE_URL",
            "postgres://deskgate:s3cret-pw@db.internal:5432/deskgate",
        );
        raw.set("RPC_URL", "https://mainnet.infura.io/v3/abcdef0123456789");
        let shown = format!("{:?}", raw.redacted_entries());
        for secret in [STRONG, "s3cret-pw", "abcdef0123456789", "deskgate@"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("postgres://<redacted>@db.internal:5432/deskgate"));
        assert!(shown.contains("https://mainnet.infura.io/<redacted>"));
    }
}
