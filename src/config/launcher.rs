//! The launcher part: where desktops run. For the gate, the backend
//! ([`LauncherKind`]: local Docker, remote `deskgate launcher` services, or
//! the simulated backend that starts nothing, for benchmarks)
//! and the token it presents to them; for a launcher (and for a gate on
//! local Docker, which is its own host 0), where it listens, its host
//! number, the session container's image and limits, and which GPUs it
//! manages.
//!
//! Invariants: the backend is decided here, once, from
//! `DESKGATE_LAUNCHER_URLS` (unset or empty = local Docker) and
//! `DESKGATE_LAUNCHER_BACKEND`, and only `app` matches on it; a remote
//! host's number is its position in that list. The simulated backend runs
//! only on fake GPUs and never beside launcher URLs.
//! Session containers never receive deskgate's own `DESKGATE_*` settings.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::GpuSelection;
use super::parse::{comma_list, parse_http_url, parse_key, parse_socket_addr, secret};
use super::raw::RawSettings;
use super::{ENV_PREFIX, Problem};
use crate::platform::secret::Secret;

/// Which launcher backend the gate runs sessions on: decided once, here,
/// from `DESKGATE_LAUNCHER_URLS` and `DESKGATE_LAUNCHER_BACKEND`, and
/// matched on only by `app`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LauncherKind {
    /// Containers on the local Docker Engine (no launcher URLs).
    LocalDocker,
    /// `deskgate launcher` services; a host's number is its position here.
    Remote(Vec<Url>),
    /// `deskgate launcher` services found by resolving a DNS name
    /// (`DESKGATE_LAUNCHER_DISCOVERY`); a host is known by its launcher's
    /// name and gets a number the first time it is seen, kept in PostgreSQL.
    Discovered(DnsTarget),
    /// Nothing is started (`DESKGATE_LAUNCHER_BACKEND=simulated`): a gate
    /// under benchmark, on fake GPUs; refused with TLS on.
    Simulated,
}

/// A DNS name whose addresses are the launchers, and their port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTarget {
    /// The name, e.g. `tasks.launcher` (Swarm's per-task records).
    pub name: String,
    /// The launchers' port.
    pub port: u16,
}

impl std::fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dns:{}:{}", self.name, self.port)
    }
}

/// `dns:NAME:PORT`.
fn parse_dns_target(text: &str) -> Result<DnsTarget, String> {
    let bad = || format!("`{text}` is not dns:NAME:PORT, such as dns:tasks.launcher:8090");
    let rest = text.strip_prefix("dns:").ok_or_else(bad)?;
    let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !valid_name {
        return Err(bad());
    }
    Ok(DnsTarget {
        name: name.to_string(),
        port,
    })
}

/// Whether `text` is a launcher's host name: 1 to 64 of `A-Za-z0-9._-`.
/// The one rule for `DESKGATE_LAUNCHER_NAME`, for the names the gate
/// accepts from discovered launchers and for the host routes' paths.
pub fn is_host_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// A launcher's host name: what the gate knows the host by.
fn parse_host_name(text: &str) -> Result<String, String> {
    if is_host_name(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a host name: 1 to 64 letters, digits, `.`, `-` or `_`"
        ))
    }
}

/// Where desktops run and what their containers may use.
#[derive(Clone, Debug)]
pub struct LauncherConfig {
    /// The gate's launcher backend.
    pub kind: LauncherKind,
    /// Token between gate and launchers.
    pub token: Option<Secret>,
    /// Address `deskgate launcher` listens on.
    pub bind: SocketAddr,
    /// The host number a launcher manages; `None` = every session container
    /// on its Docker daemon.
    pub host: Option<u16>,
    /// This launcher's stable host name (`DESKGATE_LAUNCHER_NAME`).
    pub name: Option<String>,
    /// Desktop image.
    pub session_image: String,
    /// Session container memory limit in bytes.
    pub session_memory_bytes: i64,
    /// Session container CPU limit in billionths of a CPU.
    pub session_nano_cpus: i64,
    /// Most processes in a session container.
    pub session_pids_limit: i64,
    /// Names of launcher environment variables passed into sessions.
    pub session_env_allowlist: Vec<String>,
    /// SIGTERM-to-SIGKILL grace for a stopping session container.
    pub session_stop_grace: Duration,
    /// Which GPUs to manage.
    pub gpus: GpuSelection,
    /// Warm desktops each Docker host keeps started on free GPUs.
    pub warm_desktops: usize,
}

impl LauncherConfig {
    /// Parses the launcher settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let p = &mut *problems;
        let urls = parse_key(raw, "LAUNCHER_URLS", p, |t| {
            comma_list(t)
                .map(parse_http_url)
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let simulated = parse_key(raw, "LAUNCHER_BACKEND", p, |t| match t {
            "docker" => Ok(false),
            "simulated" => Ok(true),
            _ => Err(format!(
                "`{t}` is not a launcher backend: docker (the default; remote launchers \
                 come from DESKGATE_LAUNCHER_URLS) or simulated (starts nothing, for benchmarks)"
            )),
        });
        let discovery = parse_key(raw, "LAUNCHER_DISCOVERY", p, parse_dns_target);
        let name = parse_key(raw, "LAUNCHER_NAME", p, parse_host_name);
        let bind = parse_key(raw, "LAUNCHER_BIND", p, parse_socket_addr);
        let host = parse_key(raw, "LAUNCHER_HOST", p, |t| {
            t.parse::<u16>()
                .map_err(|_| format!("`{t}` is not a host number from 0 to 65535"))
        });
        let session_image = parse_key(raw, "SESSION_IMAGE", p, |t| {
            if t.is_empty() || t.contains(char::is_whitespace) {
                Err("must be an image reference such as deskgate/desktop@sha256:…".to_string())
            } else {
                Ok(t.to_string())
            }
        });
        let session_memory_bytes =
            parse_key(raw, "SESSION_MEMORY_MIB", p, |t| match t.parse::<i64>() {
                Ok(mib) if (64..=1 << 24).contains(&mib) => Ok(mib << 20),
                _ => Err(format!("`{t}` is not a number of MiB from 64 to 16777216")),
            });
        let session_nano_cpus = parse_key(raw, "SESSION_CPUS", p, parse_cpus);
        let session_pids_limit =
            parse_key(raw, "SESSION_PIDS_LIMIT", p, |t| match t.parse::<i64>() {
                Ok(n) if (16..=1 << 22).contains(&n) => Ok(n),
                _ => Err(format!("`{t}` is not a process count from 16 to 4194304")),
            });
        let session_env_allowlist =
            parse_key(raw, "SESSION_ENV_ALLOWLIST", p, parse_env_allowlist).unwrap_or_default();
        let session_stop_grace = parse_key(raw, "SESSION_STOP_GRACE_SECONDS", p, |t| {
            match t.parse::<u64>() {
                Ok(secs) if secs <= 300 => Ok(Duration::from_secs(secs)),
                _ => Err(format!("`{t}` is not a number of seconds from 0 to 300")),
            }
        });
        let gpus = parse_key(raw, "GPUS", p, |t| t.parse::<GpuSelection>());
        let warm_desktops = parse_key(raw, "WARM_DESKTOPS", p, |t| match t.parse::<usize>() {
            Ok(n) if n <= 64 => Ok(n),
            _ => Err(format!("`{t}` is not a number of desktops from 0 to 64")),
        });
        let kind = match (simulated, urls.is_empty()) {
            _ if discovery.is_some() && !urls.is_empty() => {
                p.push(Problem::new(
                    "LAUNCHER_DISCOVERY",
                    "launchers come from a list (DESKGATE_LAUNCHER_URLS) or from DNS \
                     (DESKGATE_LAUNCHER_DISCOVERY), not both: unset one of them",
                ));
                None
            }
            (Some(true), _) if discovery.is_some() => {
                p.push(Problem::new(
                    "LAUNCHER_BACKEND",
                    "simulated starts nothing, so it cannot drive discovered launchers: \
                     unset DESKGATE_LAUNCHER_DISCOVERY or the backend",
                ));
                None
            }
            _ if discovery.is_some() => discovery.map(LauncherKind::Discovered),
            (Some(true), false) => {
                p.push(Problem::new(
                    "LAUNCHER_BACKEND",
                    "simulated starts nothing, so it cannot drive the launchers of \
                     DESKGATE_LAUNCHER_URLS: unset one of them",
                ));
                None
            }
            (Some(true), true)
                if gpus
                    .as_ref()
                    .is_some_and(|g| !matches!(g, GpuSelection::Fake(_))) =>
            {
                p.push(Problem::new(
                    "LAUNCHER_BACKEND",
                    "simulated schedules fake GPUs only: set DESKGATE_GPUS=fake:N",
                ));
                None
            }
            (Some(true), true) => Some(LauncherKind::Simulated),
            (_, true) => Some(LauncherKind::LocalDocker),
            (_, false) => Some(LauncherKind::Remote(urls)),
        };

        if problems.len() > before {
            return None;
        }
        // Every `parse_key` above with a default returned `Some` when no
        // problem was recorded.
        Some(Self {
            kind: kind?,
            token: secret(raw, "LAUNCHER_TOKEN"),
            bind: bind?,
            host,
            name,
            session_image: session_image?,
            session_memory_bytes: session_memory_bytes?,
            session_nano_cpus: session_nano_cpus?,
            session_pids_limit: session_pids_limit?,
            session_env_allowlist,
            session_stop_grace: session_stop_grace?,
            gpus: gpus?,
            warm_desktops: warm_desktops?,
        })
    }
}

/// Environment variable names; deskgate's own are refused, since a session
/// container runs the renter's code and must not see the gate's secrets.
fn parse_env_allowlist(text: &str) -> Result<Vec<String>, String> {
    comma_list(text)
        .map(|name| {
            let valid = !name.as_bytes()[0].is_ascii_digit()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                Err(format!("`{name}` is not an environment variable name"))
            } else if name.starts_with(ENV_PREFIX) {
                Err(format!(
                    "`{name}`: deskgate's own settings never go into a session container"
                ))
            } else {
                Ok(name.to_string())
            }
        })
        .collect()
}

/// A CPU count such as `2` or `1.5`, as billionths of a CPU (Docker's NanoCpus).
fn parse_cpus(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a CPU count from 0.01 to 1024, such as 2 or 1.5");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| bad())?
    };
    let nanos = whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(fraction))
        .ok_or_else(bad)?;
    if (10_000_000..=1024 * 1_000_000_000).contains(&nanos) {
        Ok(nanos)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{STRONG, env, variables};
    use crate::config::{Role, load};

    #[test]
    fn remote_launchers_are_parsed_from_the_urls_with_the_hosts_in_order() {
        let loaded = load(
            None,
            env(&[
                (
                    "DESKGATE_LAUNCHER_URLS",
                    "https://gpu-2.internal:8090, http://gpu-0.internal:8090,,https://gpu-1.internal:8090",
                ),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
            ]),
            Role::Serve,
        );
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let hosts: Vec<String> = [
            "https://gpu-2.internal:8090/",
            "http://gpu-0.internal:8090/",
            "https://gpu-1.internal:8090/",
        ]
        .map(String::from)
        .to_vec();
        match loaded.config.expect("config").launcher.kind {
            LauncherKind::Remote(urls) => {
                let urls: Vec<String> = urls.iter().map(Url::to_string).collect();
                assert_eq!(urls, hosts, "host n is the n-th URL");
            }
            other => panic!("expected remote launchers, got {other:?}"),
        }

        for unset in [&[][..], &[("DESKGATE_LAUNCHER_URLS", " , ")][..]] {
            let config = load(None, env(unset), Role::Serve).config.expect("config");
            assert_eq!(config.launcher.kind, LauncherKind::LocalDocker);
        }
    }

    #[test]
    fn a_launcher_host_number_is_read_and_a_local_gate_is_host_0() {
        let loaded = load(
            None,
            env(&[
                ("DESKGATE_LAUNCHER_HOST", "2"),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
            ]),
            Role::Launcher,
        );
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.config.unwrap().launcher.host, Some(2));

        let bad = load(None, env(&[("DESKGATE_LAUNCHER_HOST", "-1")]), Role::Serve);
        assert_eq!(variables(&bad.problems), ["DESKGATE_LAUNCHER_HOST"]);
        let local = load(None, env(&[("DESKGATE_LAUNCHER_HOST", "1")]), Role::Serve);
        assert_eq!(variables(&local.problems), ["DESKGATE_LAUNCHER_HOST"]);
        let zero = load(None, env(&[("DESKGATE_LAUNCHER_HOST", "0")]), Role::Serve);
        assert!(zero.problems.is_empty(), "{:?}", zero.problems);
    }

    #[test]
    fn discovery_is_a_dns_name_and_port_and_excludes_a_list() {
        let loaded = load(
            None,
            env(&[
                ("DESKGATE_LAUNCHER_DISCOVERY", "dns:tasks.launcher:8090"),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
            ]),
            Role::Serve,
        );
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(
            loaded.config.unwrap().launcher.kind,
            LauncherKind::Discovered(DnsTarget {
                name: "tasks.launcher".into(),
                port: 8090
            })
        );
        for bad in [
            "tasks.launcher:8090",
            "dns:tasks.launcher",
            "dns::80",
            "dns:a b:80",
            "dns:x:0",
        ] {
            let loaded = load(
                None,
                env(&[("DESKGATE_LAUNCHER_DISCOVERY", bad)]),
                Role::Serve,
            );
            assert_eq!(
                variables(&loaded.problems),
                ["DESKGATE_LAUNCHER_DISCOVERY"],
                "{bad}"
            );
        }
        let both = load(
            None,
            env(&[
                ("DESKGATE_LAUNCHER_DISCOVERY", "dns:tasks.launcher:8090"),
                ("DESKGATE_LAUNCHER_URLS", "http://gpu-0:8090"),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
            ]),
            Role::Serve,
        );
        assert_eq!(variables(&both.problems), ["DESKGATE_LAUNCHER_DISCOVERY"]);
        let named = load(
            None,
            env(&[
                ("DESKGATE_LAUNCHER_NAME", "x7k2pq"),
                ("DESKGATE_LAUNCHER_TOKEN", STRONG),
            ]),
            Role::Launcher,
        );
        assert_eq!(
            named.config.unwrap().launcher.name.as_deref(),
            Some("x7k2pq")
        );
        let unnamed = load(
            None,
            env(&[("DESKGATE_LAUNCHER_NAME", "a/b")]),
            Role::Launcher,
        );
        assert_eq!(variables(&unnamed.problems), ["DESKGATE_LAUNCHER_NAME"]);
    }

    #[test]
    fn cpus_parse_to_nano_cpus_and_refuse_nonsense() {
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_cpus("0.25"), Ok(250_000_000));
        for bad in [
            "0",
            "-1",
            "1.5.2",
            "x",
            "0.000000001",
            "2000",
            "1.1234567891",
        ] {
            assert!(parse_cpus(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn session_limits_and_allowlist_parse_and_deskgate_names_are_refused() {
        let loaded = load(
            None,
            env(&[
                ("DESKGATE_SESSION_MEMORY_MIB", "512"),
                ("DESKGATE_SESSION_ENV_ALLOWLIST", "LANG, TZ"),
            ]),
            Role::Serve,
        );
        let config = loaded.config.unwrap();
        assert_eq!(config.launcher.session_memory_bytes, 512 << 20);
        assert_eq!(config.launcher.session_env_allowlist, ["LANG", "TZ"]);
        let loaded = load(
            None,
            env(&[(
                "DESKGATE_SESSION_ENV_ALLOWLIST",
                "LANG,DESKGATE_ADMIN_TOKEN",
            )]),
            Role::Serve,
        );
        assert_eq!(
            variables(&loaded.problems),
            ["DESKGATE_SESSION_ENV_ALLOWLIST"]
        );
    }
}
