//! The short commands: `deskgate migrate`, `deskgate gpus`,
//! `deskgate config check` and `deskgate healthcheck`. Each returns what to
//! print; `main.rs` prints it and picks the exit code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::{Config, GpuSelection, Loaded, Role};
use crate::db;
use crate::launcher::gpu::{self, InventoryError};
use crate::platform::secret::Secret;

/// The report of `deskgate config check --for <role>`: the posture, every
/// setting (secrets redacted) with its source, warnings and problems. The
/// configuration is good when `loaded.problems` is empty.
pub fn config_report(loaded: &Loaded, role: Role) -> String {
    let posture = match &loaded.config {
        Some(c) if c.is_tls() => "production (TLS on)",
        Some(_) => "development (no TLS: loopback only unless allowed)",
        None => "unknown (the configuration does not parse)",
    };
    let mut report = format!(
        "deskgate configuration for `{}` — posture: {posture}\n",
        role_name(role)
    );
    for (name, value, source) in loaded.raw.redacted_entries() {
        report.push_str(&format!("  {name:<34} {value}  ({source})\n"));
    }
    for warning in &loaded.warnings {
        report.push_str(&format!("warning: {warning}\n"));
    }
    if loaded.problems.is_empty() {
        report.push_str("no problems found\n");
    } else {
        for problem in &loaded.problems {
            report.push_str(&format!("problem: {problem}\n"));
        }
        report.push_str(&format!("{} problem(s) found\n", loaded.problems.len()));
    }
    report
}

/// The command-line name of a role.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Serve => "serve",
        Role::Launcher => "launcher",
    }
}

/// The GPU inventory as the table `deskgate gpus` prints.
pub fn gpu_table(selection: &GpuSelection) -> Result<String, InventoryError> {
    Ok(gpu::render_table(&gpu::inventory(selection)?))
}

/// Applies pending migrations on a runtime of its own; what to print.
pub fn migrate(url: &Secret) -> Result<String, String> {
    let applied = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(db::migrate(url)).map_err(|e| e.to_string()))?;
    if applied.is_empty() {
        return Ok("the schema is up to date; nothing to apply\n".into());
    }
    let mut report: String = applied.iter().map(|v| format!("applied {v}\n")).collect();
    report.push_str(&format!("{} migration(s) applied\n", applied.len()));
    Ok(report)
}

/// How long `deskgate healthcheck` waits for the answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL of `role`'s own `/healthz` as seen from this host: an unspecified
/// bind address (`0.0.0.0`, `::`) is reached on loopback.
pub fn healthz_url(config: &Config, role: Role) -> String {
    let bind = config.listen_addr(role);
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if role == Role::Serve && config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}/healthz", SocketAddr::new(ip, bind.port()))
}

/// `deskgate healthcheck --for <role>`: asks the server this configuration
/// runs for its `/healthz`, for a container's `HEALTHCHECK` (no curl in the
/// image). Under TLS the certificate is not checked: the server asked is this
/// host's own listener, its name is the public one, and nothing secret is
/// sent.
pub fn healthcheck(config: &Config, role: Role) -> Result<String, String> {
    let url = healthz_url(config, role);
    let client = reqwest::Client::builder()
        .timeout(HEALTHCHECK_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let status = runtime
        .block_on(async { client.get(&url).send().await.map(|r| r.status()) })
        .map_err(|e| format!("{url} did not answer: {}", e.without_url()))?;
    if status.is_success() {
        Ok(format!("{url}: {status}\n"))
    } else {
        Err(format!("{url} answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::config::testing::env;

    #[test]
    fn healthcheck_asks_loopback_for_an_unspecified_bind_and_follows_tls() {
        let config = |pairs: &[(&str, &str)]| load(None, env(pairs), Role::Serve).config.unwrap();
        let local = config(&[]);
        assert_eq!(
            healthz_url(&local, Role::Serve),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            healthz_url(&local, Role::Launcher),
            "http://127.0.0.1:8090/healthz"
        );
        let public = config(&[
            ("DESKGATE_BIND", "0.0.0.0:9000"),
            ("DESKGATE_ALLOW_PUBLIC_BIND", "true"),
            ("DESKGATE_LAUNCHER_BIND", "[::]:8091"),
        ]);
        assert_eq!(
            healthz_url(&public, Role::Serve),
            "http://127.0.0.1:9000/healthz"
        );
        assert_eq!(
            healthz_url(&public, Role::Launcher),
            "http://[::1]:8091/healthz"
        );
    }

    #[test]
    fn healthcheck_fails_naming_the_url_when_nothing_listens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bind = format!("127.0.0.1:{port}");
        let config = load(None, env(&[("DESKGATE_BIND", &bind)]), Role::Serve)
            .config
            .unwrap();
        let err = healthcheck(&config, Role::Serve).unwrap_err();
        assert!(err.contains(&format!("http://{bind}/healthz")), "{err}");
    }
}
