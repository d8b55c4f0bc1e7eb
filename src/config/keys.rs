//! The key table: every setting deskgate reads, in the order `config check`
//! prints them and the README documents them, with how each is shown and its
//! default; and where a value came from.
//!
//! Invariants: a name here is the variable without `DESKGATE_`; the TOML file
//! uses it in lower case. Renaming or reordering a key changes `config check`
//! output and the README (tests/readme_documents_configuration.rs checks the
//! README against this table). A key that is added here is also added to
//! [`PROBLEM_ORDER`] and parsed by the part it belongs to.

use std::fmt;

/// How a setting is shown by `config check` and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exposure {
    /// Shown as it is.
    Plain,
    /// Never shown.
    Secret,
    /// A URL that may carry credentials (a password, or an API key in its
    /// path or query): shown as scheme, host and port only.
    CredentialUrl,
}

/// One setting: its name without the prefix, how to show it, its default and
/// what it is for.
#[derive(Debug)]
pub struct Key {
    /// Name without the `DESKGATE_` prefix, e.g. `BIND`.
    pub name: &'static str,
    /// How `config check` shows the value.
    pub(super) exposure: Exposure,
    /// The default, as text, or `None` when the setting is unset by default.
    pub default: Option<&'static str>,
    /// One line saying what the setting does.
    pub help: &'static str,
}

macro_rules! key {
    ($name:literal, $exposure:ident, $default:expr, $help:literal) => {
        Key {
            name: $name,
            exposure: Exposure::$exposure,
            default: $default,
            help: $help,
        }
    };
}

/// Every setting deskgate knows, in the order `config check` prints them.
pub const KEYS: &[Key] = &[
    key!(
        "BIND",
        Plain,
        Some("127.0.0.1:8080"),
        "address the gate listens on"
    ),
    key!(
        "ALLOW_PUBLIC_BIND",
        Plain,
        Some("false"),
        "must be true to listen on a non-loopback address"
    ),
    key!(
        "PUBLIC_URL",
        Plain,
        None,
        "URL browsers use to reach the gate (default: http://BIND); sign-in domain and WebSocket Origin"
    ),
    key!(
        "TLS_CERT",
        Plain,
        None,
        "PEM certificate chain; with TLS_KEY switches on HTTPS and the production posture"
    ),
    key!("TLS_KEY", Plain, None, "PEM private key for TLS_CERT"),
    key!(
        "DATABASE_URL",
        CredentialUrl,
        None,
        "PostgreSQL URL, e.g. postgres://user:pass@127.0.0.1:5432/deskgate"
    ),
    key!(
        "MIGRATE_ON_START",
        Plain,
        Some("true"),
        "`serve` applies pending database migrations at start (retrying until PostgreSQL answers)"
    ),
    key!(
        "RPC_URL",
        CredentialUrl,
        None,
        "Ethereum JSON-RPC endpoint (HTTP)"
    ),
    key!(
        "CHAIN_ID",
        Plain,
        Some("1"),
        "chain id the RPC node must report and sign-in messages must name"
    ),
    key!(
        "WALLET_RPC_URL",
        Plain,
        None,
        "public RPC URL of the chain that the page offers to wallets that do not know it (shown in /pricing)"
    ),
    key!(
        "REVENUE_ADDRESS",
        Plain,
        None,
        "address that receives deposits"
    ),
    key!(
        "TOKEN_ADDRESS",
        Plain,
        None,
        "ERC-20 token accepted for deposits and tier discounts"
    ),
    key!(
        "CONFIRMATIONS",
        Plain,
        Some("12"),
        "confirmations before a deposit is credited, or `finalized` to wait for the finalized block"
    ),
    key!(
        "PRICE_WEI_PER_GPU_HOUR",
        Plain,
        Some("1000000000000000"),
        "price of one GPU-hour in wei for ETH deposits (default 0.001 ETH)"
    ),
    key!(
        "PRICE_TOKEN_PER_GPU_HOUR",
        Plain,
        Some("1000000000000000000"),
        "price of one GPU-hour in the token's base units (default 1 token of 18 decimals)"
    ),
    key!(
        "TIERS",
        Plain,
        None,
        "token-holder discounts as MIN_BALANCE:PERCENT pairs, e.g. 1000e18:10,10000e18:25 in base units"
    ),
    key!(
        "CHAIN_POLL_MILLIS",
        Plain,
        Some("2000"),
        "how often the chain watcher asks the RPC node for new blocks"
    ),
    key!(
        "DEPOSIT_START_BLOCK",
        Plain,
        None,
        "first block the chain watcher scans on a fresh database (default: the latest block at first start)"
    ),
    key!(
        "TOKEN_TTL_SECONDS",
        Plain,
        Some("86400"),
        "lifetime of a sign-in token"
    ),
    key!(
        "ADMIN_TOKEN",
        Secret,
        None,
        "bearer token for the admin API; the admin API exists only when set"
    ),
    key!(
        "LAUNCHER_URLS",
        Plain,
        None,
        "comma-separated remote launcher URLs; unset = local Docker"
    ),
    key!(
        "LAUNCHER_DISCOVERY",
        Plain,
        None,
        "find the launchers by DNS instead of a list: dns:NAME:PORT (in a Swarm stack dns:tasks.launcher:8090), resolved every 5 s; hosts join and leave without a restart"
    ),
    key!(
        "LAUNCHER_NAME",
        Plain,
        None,
        "this launcher's stable host name, reported to the gate (GET /v1/gpus) and needed with the gate's DESKGATE_LAUNCHER_DISCOVERY; in a Swarm stack {{.Node.ID}}"
    ),
    key!(
        "LAUNCHER_BACKEND",
        Plain,
        Some("docker"),
        "docker, or simulated: starts nothing, on fake GPUs, to benchmark the queue and API (refused with TLS on)"
    ),
    key!(
        "LAUNCHER_TOKEN",
        Secret,
        None,
        "bearer token between gate and launchers"
    ),
    key!(
        "LAUNCHER_BIND",
        Plain,
        Some("127.0.0.1:8090"),
        "address `deskgate launcher` listens on"
    ),
    key!(
        "LAUNCHER_HOST",
        Plain,
        None,
        "this launcher's host number (its position in the gate's DESKGATE_LAUNCHER_URLS, from 0): it then manages only containers labelled with it and refuses launches for another host; needed when launchers share a Docker daemon"
    ),
    key!(
        "SESSION_IMAGE",
        Plain,
        Some("deskgate/desktop:local"),
        "desktop container image; `repo@sha256:…` pins it (required with TLS on where containers run)"
    ),
    key!(
        "SESSION_MEMORY_MIB",
        Plain,
        Some("4096"),
        "memory limit of a session container, MiB"
    ),
    key!(
        "SESSION_CPUS",
        Plain,
        Some("2"),
        "CPU limit of a session container (decimals allowed, e.g. 1.5)"
    ),
    key!(
        "SESSION_PIDS_LIMIT",
        Plain,
        Some("512"),
        "most processes in a session container"
    ),
    key!(
        "SESSION_ENV_ALLOWLIST",
        Plain,
        None,
        "comma-separated names of the launcher's own environment variables passed into session containers (e.g. LANG,TZ)"
    ),
    key!(
        "SESSION_STOP_GRACE_SECONDS",
        Plain,
        Some("10"),
        "how long a stopping desktop gets after SIGTERM before SIGKILL"
    ),
    key!(
        "WARM_DESKTOPS",
        Plain,
        Some("0"),
        "desktops each Docker host keeps started on free GPUs, so that a one-GPU claim gets one at once (0 = none)"
    ),
    key!(
        "GPUS",
        Plain,
        Some("auto"),
        "auto (NVML), explicit indices like 0,1,3, or fake:N for hosts without NVIDIA"
    ),
    key!(
        "BILLING_INTERVAL_SECONDS",
        Plain,
        Some("10"),
        "seconds between billing debits"
    ),
    key!(
        "PRESENCE_TIMEOUT_SECONDS",
        Plain,
        Some("60"),
        "a session stops after this long without browser presence"
    ),
    key!(
        "IDLE_TIMEOUT_SECONDS",
        Plain,
        Some("1800"),
        "a running session stops after this long without input on any media stream (0 = never); warned 60 s before"
    ),
    key!(
        "METRICS_ADDR",
        Plain,
        None,
        "address for Prometheus /metrics; unset = no metrics endpoint"
    ),
    key!(
        "TURN_URLS",
        Plain,
        None,
        "comma-separated TURN/STUN URLs handed to WebRTC clients"
    ),
    key!(
        "TURN_SECRET",
        Secret,
        None,
        "TURN REST shared secret (coturn use-auth-secret)"
    ),
    key!(
        "WEBRTC_UDP_IP",
        Plain,
        None,
        "IP the WebRTC media UDP sockets bind (ephemeral ports) where desktops run; unset = the gate's BIND IP for `serve`, every interface (0.0.0.0) for `launcher`"
    ),
    key!(
        "WEBRTC_MAX_FPS",
        Plain,
        Some("30"),
        "most video frames per second sent to a WebRTC viewer (1 to 60)"
    ),
    key!(
        "WEBRTC_BITRATE_KBPS",
        Plain,
        None,
        "WebRTC video bitrate to start at in kbit/s (100 to 50000); unset = by resolution (about 6000 at 1080p30)"
    ),
    key!(
        "WEBRTC_MAX_BITRATE_KBPS",
        Plain,
        None,
        "most the bitrate may rise to as the browser's feedback allows, kbit/s (100 to 50000); unset = the starting bitrate"
    ),
    key!(
        "WEBRTC_ENCODER",
        Plain,
        Some("auto"),
        "video encoder: auto (H.264 on NVENC where the GPU has it and the browser takes it, else VP8), vp8 or h264-nvenc"
    ),
    key!(
        "WEBRTC_PUBLIC_IPS",
        Plain,
        None,
        "comma-separated public IPs a 1:1 NAT maps to this host, advertised to browsers beside its own addresses"
    ),
    key!(
        "TRUSTED_PROXIES",
        Plain,
        None,
        "comma-separated CIDRs whose X-Forwarded-For is believed"
    ),
    key!(
        "DOCS_ENABLED",
        Plain,
        Some("false"),
        "serve the OpenAPI document"
    ),
    key!("LOG_FORMAT", Plain, Some("text"), "text or json"),
    key!(
        "MAX_BODY_BYTES",
        Plain,
        Some("65536"),
        "largest request body accepted (413 above it)"
    ),
    key!(
        "REQUEST_TIMEOUT_SECONDS",
        Plain,
        Some("30"),
        "requests running longer get 408"
    ),
    key!(
        "HTTP_HEADER_TIMEOUT_SECONDS",
        Plain,
        Some("10"),
        "a connection must send a complete request head (and finish its TLS handshake) within this long of connecting or of its previous response, so it is also the keep-alive idle limit; closed otherwise"
    ),
    key!(
        "HTTP_MAX_HEADER_BYTES",
        Plain,
        Some("16384"),
        "largest request head (request line and headers), 8192 to 1048576; 431 above it"
    ),
    key!(
        "MAX_CONNECTIONS_PER_CLIENT",
        Plain,
        Some("128"),
        "open connections (WebSockets included) one client address may hold (IPv6: per /64; trusted proxies count only against the total); more are closed at once"
    ),
    key!(
        "MAX_CONNECTIONS",
        Plain,
        Some("4096"),
        "open connections in all on the gate's listener (the metrics listener counts its own); more are closed at once"
    ),
    key!(
        "SIGN_IN_RATE_PER_MINUTE",
        Plain,
        Some("10"),
        "sign-in requests (nonce and verify) per minute per client address (IPv6: per /64); 429 above it"
    ),
    key!(
        "SIGN_IN_RATE_BURST",
        Plain,
        Some("5"),
        "sign-in requests a client may make back to back"
    ),
    key!(
        "CLAIM_RATE_PER_MINUTE",
        Plain,
        Some("30"),
        "session claims per minute per client address (IPv6: per /64); 429 above it"
    ),
    key!(
        "CLAIM_RATE_BURST",
        Plain,
        Some("10"),
        "session claims a client may make back to back"
    ),
    key!(
        "SHUTDOWN_GRACE_SECONDS",
        Plain,
        Some("3"),
        "how long open requests may finish after SIGTERM"
    ),
];

/// The key named `name` (without the prefix), if deskgate knows it.
pub(super) fn key_info(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// The TOML file given with `--config`.
    File,
    /// A `DESKGATE_*` environment variable.
    Env,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
        })
    }
}

/// The order parse problems are reported in: the order the settings were
/// parsed in when the configuration was one flat struct. Each part now
/// parses its own keys, so `config` sorts the problems by this list to keep
/// `config check` output as it was. New keys go at the end.
pub(super) const PROBLEM_ORDER: &[&str] = &[
    "BIND",
    "ALLOW_PUBLIC_BIND",
    "TLS_CERT",
    "TLS_KEY",
    "PUBLIC_URL",
    "DATABASE_URL",
    "RPC_URL",
    "CHAIN_ID",
    "WALLET_RPC_URL",
    "REVENUE_ADDRESS",
    "TOKEN_ADDRESS",
    "CONFIRMATIONS",
    "PRICE_WEI_PER_GPU_HOUR",
    "PRICE_TOKEN_PER_GPU_HOUR",
    "TIERS",
    "CHAIN_POLL_MILLIS",
    "DEPOSIT_START_BLOCK",
    "TOKEN_TTL_SECONDS",
    "LAUNCHER_URLS",
    "LAUNCHER_DISCOVERY",
    "LAUNCHER_BIND",
    "LAUNCHER_HOST",
    "LAUNCHER_NAME",
    "SESSION_IMAGE",
    "SESSION_MEMORY_MIB",
    "SESSION_CPUS",
    "SESSION_PIDS_LIMIT",
    "SESSION_ENV_ALLOWLIST",
    "SESSION_STOP_GRACE_SECONDS",
    "WARM_DESKTOPS",
    "WEBRTC_UDP_IP",
    "WEBRTC_MAX_FPS",
    "WEBRTC_BITRATE_KBPS",
    "WEBRTC_MAX_BITRATE_KBPS",
    "WEBRTC_ENCODER",
    "WEBRTC_PUBLIC_IPS",
    "GPUS",
    "BILLING_INTERVAL_SECONDS",
    "PRESENCE_TIMEOUT_SECONDS",
    "IDLE_TIMEOUT_SECONDS",
    "METRICS_ADDR",
    "TURN_URLS",
    "TRUSTED_PROXIES",
    "DOCS_ENABLED",
    "MIGRATE_ON_START",
    "LOG_FORMAT",
    "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT_SECONDS",
    "SIGN_IN_RATE_PER_MINUTE",
    "SIGN_IN_RATE_BURST",
    "CLAIM_RATE_PER_MINUTE",
    "CLAIM_RATE_BURST",
    "SHUTDOWN_GRACE_SECONDS",
    "HTTP_HEADER_TIMEOUT_SECONDS",
    "HTTP_MAX_HEADER_BYTES",
    "MAX_CONNECTIONS_PER_CLIENT",
    "MAX_CONNECTIONS",
    "LAUNCHER_BACKEND",
    // Never parse problems (they are only checked by the posture), listed
    // so that the list covers every key.
    "ADMIN_TOKEN",
    "LAUNCHER_TOKEN",
    "TURN_SECRET",
];

/// Where a problem about `name` (without the prefix) goes in
/// [`PROBLEM_ORDER`]; problems about anything else go last.
pub(super) fn problem_rank(name: &str) -> usize {
    PROBLEM_ORDER
        .iter()
        .position(|k| *k == name)
        .unwrap_or(PROBLEM_ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_problem_order_names_every_key_once() {
        let mut ordered: Vec<&str> = PROBLEM_ORDER.to_vec();
        let mut keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        ordered.sort_unstable();
        keys.sort_unstable();
        assert_eq!(ordered, keys);
    }
}
