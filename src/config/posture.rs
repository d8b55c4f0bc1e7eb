//! The security posture of DESIGN §8, checked once the settings parse: what
//! each role needs set, what may listen beyond loopback, and how strong the
//! secrets must be. With TLS on (the production posture) weak secrets,
//! placeholder passwords and unpinned images are problems; without it they
//! are warnings, since a loopback development gate is allowed to be lax.
//!
//! Invariants: a problem or warning names its variable and never repeats a
//! secret; the checks read only the parsed [`Config`], in a fixed order, so
//! `config check` reports them the same way every time.

use url::Url;

use super::{Config, ENV_PREFIX, LauncherKind, Problem, Role};
use crate::platform::secret::{Secret, Weakness};

/// Checks the security posture of DESIGN §8 for `role`.
pub(super) fn check_posture(
    config: &Config,
    role: Role,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    let (bind_key, addr) = match role {
        Role::Serve => ("BIND", config.server.bind),
        Role::Launcher => ("LAUNCHER_BIND", config.launcher.bind),
    };
    if !addr.ip().is_loopback() && !config.server.allow_public_bind {
        problems.push(Problem::new(
            bind_key,
            format!(
                "{addr} is not a loopback address; set DESKGATE_ALLOW_PUBLIC_BIND=true to listen on it \
                 (put TLS in front: set DESKGATE_TLS_CERT and DESKGATE_TLS_KEY), or bind 127.0.0.1"
            ),
        ));
    }

    if role == Role::Serve {
        if config.database.url.is_none() {
            problems.push(Problem::new(
                "DATABASE_URL",
                "is not set: point it at PostgreSQL (postgres://user:password@host:5432/deskgate); `make run` starts a local one",
            ));
        }
        if config.chain.rpc_url.is_none() {
            problems.push(Problem::new(
                "RPC_URL",
                "is not set: point it at an Ethereum JSON-RPC node; `make run` starts a local anvil",
            ));
        }
        if config.is_tls() && config.server.public_url.scheme() != "https" {
            problems.push(Problem::new(
                "PUBLIC_URL",
                "must be an https:// URL when TLS is on (browsers reach the gate over HTTPS)",
            ));
        }
    }

    // The gate's own Docker is host 0; a gate with launchers runs no containers.
    if role == Role::Serve
        && config.launcher.kind == LauncherKind::LocalDocker
        && config.launcher.host.is_some_and(|host| host != 0)
    {
        problems.push(Problem::new(
            "LAUNCHER_HOST",
            "is a `deskgate launcher` setting; a gate on local Docker is host 0: unset it",
        ));
    }

    // The simulated backend grants desktops that do not exist: a benchmark's
    // gate, never one that takes money from users, nor a launcher's.
    if config.launcher.kind == LauncherKind::Simulated {
        if role == Role::Launcher {
            problems.push(Problem::new(
                "LAUNCHER_BACKEND",
                "simulated is a gate setting; `deskgate launcher` always runs Docker: unset it",
            ));
        } else if config.is_tls() {
            problems.push(Problem::new(
                "LAUNCHER_BACKEND",
                "simulated starts no desktops, so users would pay for nothing; \
                 it is refused with TLS on (the production posture): use docker or LAUNCHER_URLS",
            ));
        }
    }

    let runs_containers = match (role, &config.launcher.kind) {
        (Role::Launcher, _) | (Role::Serve, LauncherKind::LocalDocker) => true,
        (
            Role::Serve,
            LauncherKind::Remote(_) | LauncherKind::Discovered(_) | LauncherKind::Simulated,
        ) => false,
    };
    if config.is_tls() && runs_containers && !config.launcher.session_image.contains("@sha256:") {
        problems.push(Problem::new(
            "SESSION_IMAGE",
            format!(
                "`{}` is not pinned by digest; with TLS on use repo@sha256:<digest> \
                 (`docker image inspect --format '{{{{index .RepoDigests 0}}}}' IMAGE` prints it)",
                config.launcher.session_image
            ),
        ));
    }

    // The secrets this role needs, and whether each is needed at all.
    let mut needed: Vec<(&'static str, Option<&Secret>, &str)> = Vec::new();
    match role {
        Role::Serve => {
            if config.auth.admin_token.is_some() {
                needed.push((
                    "ADMIN_TOKEN",
                    config.auth.admin_token.as_ref(),
                    "the admin API is on",
                ));
            }
            if let LauncherKind::Remote(_) = config.launcher.kind {
                needed.push((
                    "LAUNCHER_TOKEN",
                    config.launcher.token.as_ref(),
                    "DESKGATE_LAUNCHER_URLS is set",
                ));
            }
            if let LauncherKind::Discovered(_) = config.launcher.kind {
                needed.push((
                    "LAUNCHER_TOKEN",
                    config.launcher.token.as_ref(),
                    "DESKGATE_LAUNCHER_DISCOVERY is set",
                ));
            }
            if !config.media.turn_urls.is_empty() {
                needed.push((
                    "TURN_SECRET",
                    config.media.turn_secret.as_ref(),
                    "DESKGATE_TURN_URLS is set",
                ));
            }
        }
        Role::Launcher => {
            needed.push((
                "LAUNCHER_TOKEN",
                config.launcher.token.as_ref(),
                "the launcher API needs it",
            ));
        }
    }
    for (name, secret, why_needed) in needed {
        match secret.map(Secret::weakness) {
            None => problems.push(Problem::new(
                name,
                format!("is not set but {why_needed}: generate one with `openssl rand -hex 32`"),
            )),
            Some(Some(weakness)) if config.is_tls() => problems.push(Problem::new(
                name,
                format!(
                    "{weakness}; with TLS on every secret must be at least 32 random bytes: \
                     generate one with `openssl rand -hex 32`"
                ),
            )),
            Some(Some(weakness)) => {
                if role == Role::Launcher && weakness == Weakness::Empty {
                    problems.push(Problem::new(
                        name,
                        "is empty: generate one with `openssl rand -hex 32`",
                    ));
                } else {
                    warnings.push(format!(
                        "{ENV_PREFIX}{name} {weakness}; acceptable without TLS on loopback, refused once TLS is on"
                    ));
                }
            }
            Some(None) => {}
        }
    }

    if config.is_tls()
        && role == Role::Serve
        && let Some(db) = &config.database.url
        && let Ok(url) = Url::parse(db.expose())
        && let Some(password) = url.password()
        && crate::platform::secret::is_placeholder(password)
    {
        problems.push(Problem::new(
            "DATABASE_URL",
            "carries a placeholder password; set a real PostgreSQL password",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{PINNED_IMAGE, STRONG, env, variables};
    use crate::config::{Role, load};

    #[test]
    fn public_bind_is_refused_unless_allowed() {
        let loaded = load(None, env(&[("DESKGATE_BIND", "0.0.0.0:8080")]), Role::Serve);
        let problem = &loaded.problems[0];
        assert_eq!(problem.variable, "DESKGATE_BIND");
        assert!(problem.message.contains("DESKGATE_ALLOW_PUBLIC_BIND=true"));

        let allowed = load(
            None,
            env(&[
                ("DESKGATE_BIND", "0.0.0.0:8080"),
                ("DESKGATE_ALLOW_PUBLIC_BIND", "true"),
            ]),
            Role::Serve,
        );
        assert!(allowed.problems.is_empty(), "{:?}", allowed.problems);
    }

    #[test]
    fn tls_posture_refuses_placeholder_and_short_secrets() {
        let tls = [
            ("DESKGATE_TLS_CERT", "/etc/deskgate/cert.pem"),
            ("DESKGATE_TLS_KEY", "/etc/deskgate/key.pem"),
            ("DESKGATE_PUBLIC_URL", "https://desk.example.org"),
            ("DESKGATE_SESSION_IMAGE", PINNED_IMAGE),
        ];
        let mut pairs = tls.to_vec();
        pairs.push(("DESKGATE_ADMIN_TOKEN", "change-me"));
        let loaded = load(None, env(&pairs), Role::Serve);
        assert_eq!(variables(&loaded.problems), ["DESKGATE_ADMIN_TOKEN"]);
        assert!(loaded.problems[0].message.contains("placeholder"));

        let mut pairs = tls.to_vec();
        pairs.push(("DESKGATE_ADMIN_TOKEN", "short-but-not-a-placeholder"));
        let loaded = load(None, env(&pairs), Role::Serve);
        assert!(loaded.problems[0].message.contains("shorter than 32 bytes"));

        let mut pairs = tls.to_vec();
        pairs.push(("DESKGATE_ADMIN_TOKEN", STRONG));
        let loaded = load(None, env(&pairs), Role::Serve);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    }

    #[test]
    fn tls_posture_requires_the_secrets_its_features_need() {
        let loaded = load(
            None,
            env(&[
                ("DESKGATE_TLS_CERT", "/c.pem"),
                ("DESKGATE_TLS_KEY", "/k.pem"),
                ("DESKGATE_LAUNCHER_URLS", "https://gpu-1.internal:8090"),
                ("DESKGATE_TURN_URLS", "turn:turn.example.org:3478"),
            ]),
            Role::Serve,
        );
        let vars = variables(&loaded.problems);
        assert!(vars.contains(&"DESKGATE_LAUNCHER_TOKEN"), "{vars:?}");
        assert!(vars.contains(&"DESKGATE_TURN_SECRET"), "{vars:?}");
    }

    #[test]
    fn tls_posture_refuses_the_dev_database_password() {
        let loaded = load(
            None,
            [
                ("DESKGATE_TLS_CERT", "/c.pem"),
                ("DESKGATE_TLS_KEY", "/k.pem"),
                (
                    "DESKGATE_DATABASE_URL",
                    "postgres://deskgate:deskgate-dev-only@db/deskgate",
                ),
                ("DESKGATE_RPC_URL", "http://127.0.0.1:8545"),
                ("DESKGATE_SESSION_IMAGE", PINNED_IMAGE),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
            Role::Serve,
        );
        assert_eq!(variables(&loaded.problems), ["DESKGATE_DATABASE_URL"]);
    }

    #[test]
    fn weak_secrets_only_warn_without_tls() {
        let loaded = load(
            None,
            env(&[("DESKGATE_ADMIN_TOKEN", "change-me")]),
            Role::Serve,
        );
        assert!(loaded.problems.is_empty());
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            !loaded.warnings[0].contains("change-me"),
            "a warning never repeats the secret"
        );
    }

    #[test]
    fn the_launcher_always_needs_its_token() {
        let loaded = load(None, Vec::new(), Role::Launcher);
        assert_eq!(variables(&loaded.problems), ["DESKGATE_LAUNCHER_TOKEN"]);
    }

    #[test]
    fn the_simulated_backend_is_refused_with_tls_in_a_launcher_and_off_fake_gpus() {
        let simulated = [
            ("DESKGATE_LAUNCHER_BACKEND", "simulated"),
            ("DESKGATE_GPUS", "fake:8"),
        ];
        let loaded = load(None, env(&simulated), Role::Serve);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);

        let mut tls = simulated.to_vec();
        tls.extend([
            ("DESKGATE_TLS_CERT", "/c.pem"),
            ("DESKGATE_TLS_KEY", "/k.pem"),
            ("DESKGATE_PUBLIC_URL", "https://desk.example.org"),
        ]);
        let loaded = load(None, env(&tls), Role::Serve);
        assert_eq!(
            variables(&loaded.problems),
            ["DESKGATE_LAUNCHER_BACKEND"],
            "{:?}",
            loaded.problems
        );
        assert!(loaded.problems[0].message.contains("TLS"));

        let mut launcher = simulated.to_vec();
        launcher.push(("DESKGATE_LAUNCHER_TOKEN", STRONG));
        let loaded = load(None, env(&launcher), Role::Launcher);
        assert_eq!(variables(&loaded.problems), ["DESKGATE_LAUNCHER_BACKEND"]);

        for (key, value) in [
            ("DESKGATE_GPUS", "0,1"),
            ("DESKGATE_LAUNCHER_URLS", "https://gpu-1.internal:8090"),
        ] {
            let mut pairs = simulated.to_vec();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let loaded = load(None, env(&pairs), Role::Serve);
            assert!(
                variables(&loaded.problems).contains(&"DESKGATE_LAUNCHER_BACKEND"),
                "{key}={value}: {:?}",
                loaded.problems
            );
        }
        let bad = load(
            None,
            env(&[("DESKGATE_LAUNCHER_BACKEND", "kwok")]),
            Role::Serve,
        );
        assert_eq!(variables(&bad.problems), ["DESKGATE_LAUNCHER_BACKEND"]);
    }

    #[test]
    fn tls_needs_a_pinned_image_where_containers_run() {
        let tls = [
            ("DESKGATE_TLS_CERT", "/c.pem"),
            ("DESKGATE_TLS_KEY", "/k.pem"),
            ("DESKGATE_LAUNCHER_TOKEN", STRONG),
        ];
        let loaded = load(None, env(&tls), Role::Launcher);
        assert!(
            variables(&loaded.problems).contains(&"DESKGATE_SESSION_IMAGE"),
            "{:?}",
            loaded.problems
        );
        let digest = format!("deskgate/desktop@sha256:{}", "ab".repeat(32));
        let mut pinned = tls.to_vec();
        pinned.push(("DESKGATE_SESSION_IMAGE", &digest));
        let loaded = load(None, env(&pinned), Role::Launcher);
        assert!(
            !variables(&loaded.problems).contains(&"DESKGATE_SESSION_IMAGE"),
            "{:?}",
            loaded.problems
        );
    }
}
