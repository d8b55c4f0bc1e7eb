//! Typed configuration.
//!
//! Every setting is a `DESKGATE_*` environment variable; an optional TOML file
//! (`--config`) mirrors them with lower-case keys (`bind = "127.0.0.1:8080"`),
//! and the environment wins over the file. Loading never stops at the first
//! mistake: it collects every problem, each naming its variable and the fix,
//! so `deskgate config check` can show them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use ipnet::IpNet;
use url::Url;

use crate::http::rate_limit::Quota;
use crate::launcher::gpu::GpuSelection;
use crate::platform::secret::{Secret, Weakness};

/// Prefix of every environment variable deskgate reads.
pub const ENV_PREFIX: &str = "DESKGATE_";

/// How a setting is shown by `config check` and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exposure {
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
    exposure: Exposure,
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
        "IP the WebRTC media UDP sockets bind (ephemeral ports); unset = the BIND address's IP, 0.0.0.0 = every interface"
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
        Some("2500"),
        "WebRTC video bitrate in kbit/s (100 to 50000)"
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

fn key_info(name: &str) -> Option<&'static Key> {
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

/// A configuration mistake, naming the variable it concerns and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct Problem {
    /// The variable, e.g. `DESKGATE_BIND`, or the file path for file errors.
    pub variable: String,
    /// What is wrong and how to fix it. Never contains a secret.
    pub message: String,
}

impl Problem {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            variable: format!("{ENV_PREFIX}{key}"),
            message: message.into(),
        }
    }
}

/// The settings as text, before parsing, with where each came from.
#[derive(Clone, Debug, Default)]
pub struct RawSettings {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl RawSettings {
    /// Gathers settings from an optional TOML file and then the environment
    /// (`env` is normally `std::env::vars()`); problems with the file itself
    /// are returned alongside.
    pub fn gather(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Self, Vec<Problem>) {
        let mut raw = Self::default();
        let mut problems = Vec::new();
        if let Some(path) = file {
            raw.read_file(path, &mut problems);
        }
        for (name, value) in env {
            let Some(short) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Unknown DESKGATE_* variables are tolerated: test harnesses and
            // scripts share the prefix.
            if let Some(key) = key_info(short) {
                raw.values.insert(key.name, (value, Source::Env));
            }
        }
        (raw, problems)
    }

    fn read_file(&mut self, path: &Path, problems: &mut Vec<Problem>) {
        let file_problem = |message: String| Problem {
            variable: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                problems.push(file_problem(format!("cannot read the config file: {err}")));
                return;
            }
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

    fn get(&self, name: &'static str) -> Option<&str> {
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

/// Which program the configuration is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The gate (`deskgate serve`).
    Serve,
    /// A GPU host's launcher service (`deskgate launcher`).
    Launcher,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Certificate and key for HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Which launcher backend the gate runs sessions on: decided once, here,
/// from `DESKGATE_LAUNCHER_URLS`, and matched on only by `app`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LauncherKind {
    /// Containers on the local Docker Engine (no launcher URLs).
    LocalDocker,
    /// `deskgate launcher` services; a host's number is its position here.
    Remote(Vec<Url>),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the gate listens on.
    pub bind: SocketAddr,
    /// Whether a non-loopback `bind` is allowed.
    pub allow_public_bind: bool,
    /// URL browsers use to reach the gate.
    pub public_url: Url,
    /// HTTPS files; `Some` means the production posture.
    pub tls: Option<TlsFiles>,
    /// PostgreSQL URL (may hold a password).
    pub database_url: Option<Secret>,
    /// `serve` migrates the database at start.
    pub migrate_on_start: bool,
    /// Ethereum JSON-RPC URL (may hold an API key).
    pub rpc_url: Option<Secret>,
    /// Expected chain id.
    pub chain_id: u64,
    /// Deposit recipient.
    pub revenue_address: Option<Address>,
    /// Accepted ERC-20 token.
    pub token_address: Option<Address>,
    /// Confirmations before crediting.
    pub confirmations: Confirmations,
    /// Wei per GPU-hour for ETH deposits.
    pub price_wei_per_gpu_hour: U256,
    /// Token base units per GPU-hour.
    pub price_token_per_gpu_hour: U256,
    /// Token-holder discount tiers, ascending by minimum balance.
    pub tiers: Vec<Tier>,
    /// Chain polling period.
    pub chain_poll: Duration,
    /// First block to scan on a fresh database.
    pub deposit_start_block: Option<u64>,
    /// Sign-in token lifetime.
    pub token_ttl: Duration,
    /// Admin API token; the admin API exists only when set.
    pub admin_token: Option<Secret>,
    /// Remote launchers; empty means local Docker.
    pub launcher_urls: Vec<Url>,
    /// Token between gate and launchers.
    pub launcher_token: Option<Secret>,
    /// Address `deskgate launcher` listens on.
    pub launcher_bind: SocketAddr,
    /// The host number a launcher manages; `None` = every session container
    /// on its Docker daemon.
    pub launcher_host: Option<u16>,
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
    /// Time between billing debits.
    pub billing_interval: Duration,
    /// Presence timeout.
    pub presence_timeout: Duration,
    /// Prometheus listener.
    pub metrics_addr: Option<SocketAddr>,
    /// TURN/STUN URLs for WebRTC.
    pub turn_urls: Vec<String>,
    /// TURN REST shared secret.
    pub turn_secret: Option<Secret>,
    /// IP the WebRTC media UDP sockets bind.
    pub webrtc_udp_ip: IpAddr,
    /// Most video frames per second to a WebRTC viewer.
    pub webrtc_max_fps: u32,
    /// WebRTC video bitrate, bits per second.
    pub webrtc_bitrate_bps: u32,
    /// Proxies whose X-Forwarded-For is trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve the OpenAPI document.
    pub docs_enabled: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Per-request time limit.
    pub request_timeout: Duration,
    /// Per-client limit on the sign-in endpoints.
    pub sign_in_quota: Quota,
    /// Per-client limit on session claims.
    pub claim_quota: Quota,
    /// Grace period for open requests at shutdown.
    pub shutdown_grace: Duration,
}

/// The result of loading: the configuration if it parsed, every problem, and
/// warnings that do not stop the program.
#[derive(Debug)]
pub struct Loaded {
    /// The raw settings, for `config check`.
    pub raw: RawSettings,
    /// The parsed configuration; `None` when a setting could not be parsed.
    pub config: Option<Config>,
    /// Everything that must be fixed before the program may start.
    pub problems: Vec<Problem>,
    /// Things worth knowing that do not stop it.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// The configuration when there are no problems, or every problem.
    pub fn into_result(self) -> Result<(Config, Vec<String>), Vec<Problem>> {
        match self.config {
            Some(config) if self.problems.is_empty() => Ok((config, self.warnings)),
            _ => Err(self.problems),
        }
    }
}

impl Config {
    /// The launcher backend this configuration asks for.
    pub fn launcher_kind(&self) -> LauncherKind {
        if self.launcher_urls.is_empty() {
            LauncherKind::LocalDocker
        } else {
            LauncherKind::Remote(self.launcher_urls.clone())
        }
    }
}

/// Loads the configuration for `role` from an optional file and the
/// environment, and checks the security posture.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    role: Role,
) -> Loaded {
    let (raw, mut problems) = RawSettings::gather(file, env);
    let config = Config::parse(&raw, &mut problems);
    let mut warnings = Vec::new();
    if let Some(config) = &config {
        config.check_posture(role, &mut problems, &mut warnings);
    }
    Loaded {
        raw,
        config,
        problems,
        warnings,
    }
}

/// Parses one setting with `parse`, falling back to its default; records a
/// problem (and returns `None`) when the value does not parse.
fn parse_key<T>(
    raw: &RawSettings,
    name: &'static str,
    problems: &mut Vec<Problem>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let key = key_info(name).expect("every parsed key is in KEYS");
    let text = raw.get(name).or(key.default)?;
    match parse(text.trim()) {
        Ok(value) => Some(value),
        Err(why) => {
            problems.push(Problem::new(name, why));
            None
        }
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("`{text}` is not a boolean: use true or false")),
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address with a port: use for example 127.0.0.1:8080 or [::1]:8080")
    })
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a whole number of seconds above 0")),
        Ok(secs) => Ok(Duration::from_secs(secs)),
    }
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

/// A rate limit from its two settings: requests per minute and burst, each
/// a whole number from 1 to 100000.
fn parse_quota(
    raw: &RawSettings,
    per_minute_key: &'static str,
    burst_key: &'static str,
    problems: &mut Vec<Problem>,
) -> Option<Quota> {
    let count = |t: &str| match t.parse::<NonZeroU32>() {
        Ok(n) if n.get() <= 100_000 => Ok(n),
        _ => Err(format!("`{t}` is not a whole number from 1 to 100000")),
    };
    let per_minute = parse_key(raw, per_minute_key, problems, count);
    let burst = parse_key(raw, burst_key, problems, count);
    Some(Quota {
        per_minute: per_minute?,
        burst: burst?,
    })
}

fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a whole number"))
}

/// How long a deposit waits before it is credited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmations {
    /// This many blocks on top of the deposit's block (1 = the block itself).
    Blocks(u64),
    /// Until the node's `finalized` block includes it.
    Finalized,
}

/// A token-holder discount: at least `min_balance` base units of the token
/// take `percent` off the price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Minimum token balance, base units.
    pub min_balance: U256,
    /// Discount, percent (1 to 90).
    pub percent: u8,
}

/// A positive integer amount of base units; `1e15`-style exponents allowed.
fn parse_amount(text: &str) -> Result<U256, String> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (
            m,
            e.parse::<usize>()
                .map_err(|_| format!("`{text}` has a bad exponent"))?,
        ),
        None => (text, 0),
    };
    let mantissa = U256::from_str_radix(mantissa, 10)
        .map_err(|_| format!("`{text}` is not a whole number of base units"))?;
    U256::from(10u8)
        .checked_pow(U256::from(exponent))
        .and_then(|scale| mantissa.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn parse_price(text: &str) -> Result<U256, String> {
    match parse_amount(text)? {
        price if price.is_zero() => Err("a price of 0 would give unlimited credit".into()),
        price => Ok(price),
    }
}

fn parse_tiers(text: &str) -> Result<Vec<Tier>, String> {
    let mut tiers = comma_list(text)
        .map(|pair| {
            let (balance, percent) = pair
                .split_once(':')
                .ok_or_else(|| format!("`{pair}` is not MIN_BALANCE:PERCENT"))?;
            let percent = match percent.trim_end_matches('%').parse::<u8>() {
                Ok(p) if (1..=90).contains(&p) => p,
                _ => {
                    return Err(format!(
                        "`{percent}` is not a discount from 1 to 90 percent"
                    ));
                }
            };
            Ok(Tier {
                min_balance: parse_amount(balance)?,
                percent,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    tiers.sort_by_key(|t| t.min_balance);
    if tiers
        .windows(2)
        .any(|w| w[0].min_balance == w[1].min_balance || w[0].percent >= w[1].percent)
    {
        return Err("tiers must have distinct balances and grow in discount with balance".into());
    }
    Ok(tiers)
}

fn parse_address(text: &str) -> Result<Address, String> {
    Address::parse_checksummed(text, None)
        .or_else(|_| {
            // All-lower-case hex has no checksum to verify; mixed case must be EIP-55.
            if text == text.to_ascii_lowercase() {
                text.parse::<Address>().map_err(|e| e.to_string())
            } else {
                Err("bad EIP-55 checksum".to_string())
            }
        })
        .map_err(|why| {
            format!("`{text}` is not an Ethereum address ({why}): use 0x followed by 40 hex digits")
        })
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "URL scheme `{other}` is not supported: use http:// or https://"
        )),
    }
}

fn comma_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl Config {
    /// Parses every setting, collecting problems; `None` if any failed.
    fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let p = &mut *problems;
        let bind = parse_key(raw, "BIND", p, parse_socket_addr);
        let allow_public_bind = parse_key(raw, "ALLOW_PUBLIC_BIND", p, parse_bool);
        let tls_cert = parse_key(raw, "TLS_CERT", p, |t| Ok(PathBuf::from(t)));
        let tls_key = parse_key(raw, "TLS_KEY", p, |t| Ok(PathBuf::from(t)));
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                p.push(Problem::new(
                    "TLS_KEY",
                    "is unset but DESKGATE_TLS_CERT is set: set both (HTTPS) or neither",
                ));
                None
            }
            (None, Some(_)) => {
                p.push(Problem::new(
                    "TLS_CERT",
                    "is unset but DESKGATE_TLS_KEY is set: set both (HTTPS) or neither",
                ));
                None
            }
        };
        let public_url = match raw.get("PUBLIC_URL") {
            Some(_) => parse_key(raw, "PUBLIC_URL", p, parse_http_url),
            None => bind.map(|addr| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Url::parse(&format!("{scheme}://{addr}")).expect("a socket address makes a URL")
            }),
        };
        let secret = |name: &'static str| raw.get(name).map(Secret::new);
        let database_url = secret("DATABASE_URL");
        if let Some(url) = &database_url {
            let scheme_ok = Url::parse(url.expose())
                .map(|u| matches!(u.scheme(), "postgres" | "postgresql"))
                .unwrap_or(false);
            if !scheme_ok {
                p.push(Problem::new(
                    "DATABASE_URL",
                    "is not a postgres:// URL: use postgres://user:password@host:5432/database",
                ));
            }
        }
        let rpc_url = secret("RPC_URL");
        if let Some(url) = &rpc_url
            && parse_http_url(url.expose()).is_err()
        {
            p.push(Problem::new("RPC_URL", "is not an http:// or https:// URL"));
        }
        let chain_id = parse_key(raw, "CHAIN_ID", p, parse_u64);
        let revenue_address = parse_key(raw, "REVENUE_ADDRESS", p, parse_address);
        let token_address = parse_key(raw, "TOKEN_ADDRESS", p, parse_address);
        let confirmations = parse_key(raw, "CONFIRMATIONS", p, |t| match t {
            "finalized" => Ok(Confirmations::Finalized),
            _ => parse_u64(t)
                .map(Confirmations::Blocks)
                .map_err(|e| format!("{e} (or `finalized`)")),
        });
        let price_wei_per_gpu_hour = parse_key(raw, "PRICE_WEI_PER_GPU_HOUR", p, parse_price);
        let price_token_per_gpu_hour = parse_key(raw, "PRICE_TOKEN_PER_GPU_HOUR", p, parse_price);
        let tiers = parse_key(raw, "TIERS", p, parse_tiers).unwrap_or_default();
        let chain_poll = parse_key(raw, "CHAIN_POLL_MILLIS", p, |t| match t.parse::<u64>() {
            Ok(ms) if (50..=60_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "`{t}` is not a number of milliseconds from 50 to 60000"
            )),
        });
        let deposit_start_block = parse_key(raw, "DEPOSIT_START_BLOCK", p, parse_u64);
        let token_ttl = parse_key(raw, "TOKEN_TTL_SECONDS", p, parse_seconds);
        let launcher_urls = parse_key(raw, "LAUNCHER_URLS", p, |t| {
            comma_list(t)
                .map(parse_http_url)
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let launcher_bind = parse_key(raw, "LAUNCHER_BIND", p, parse_socket_addr);
        let launcher_host = parse_key(raw, "LAUNCHER_HOST", p, |t| {
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
        let session_env_allowlist = parse_key(raw, "SESSION_ENV_ALLOWLIST", p, |t| {
            comma_list(t)
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
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let session_stop_grace = parse_key(raw, "SESSION_STOP_GRACE_SECONDS", p, |t| {
            match t.parse::<u64>() {
                Ok(secs) if secs <= 300 => Ok(Duration::from_secs(secs)),
                _ => Err(format!("`{t}` is not a number of seconds from 0 to 300")),
            }
        });
        let webrtc_udp_ip = parse_key(raw, "WEBRTC_UDP_IP", p, |t| {
            t.parse::<IpAddr>()
                .map_err(|_| format!("`{t}` is not an IP address such as 192.0.2.10 or 0.0.0.0"))
        });
        let webrtc_max_fps = parse_key(raw, "WEBRTC_MAX_FPS", p, |t| match t.parse::<u32>() {
            Ok(n @ 1..=60) => Ok(n),
            _ => Err(format!("`{t}` is not a frame rate from 1 to 60")),
        });
        let webrtc_bitrate_kbps =
            parse_key(raw, "WEBRTC_BITRATE_KBPS", p, |t| match t.parse::<u32>() {
                Ok(n @ 100..=50_000) => Ok(n),
                _ => Err(format!("`{t}` is not a bitrate from 100 to 50000 kbit/s")),
            });
        let gpus = parse_key(raw, "GPUS", p, |t| t.parse::<GpuSelection>());
        let billing_interval = parse_key(raw, "BILLING_INTERVAL_SECONDS", p, parse_seconds);
        let presence_timeout = parse_key(raw, "PRESENCE_TIMEOUT_SECONDS", p, parse_seconds);
        let metrics_addr = parse_key(raw, "METRICS_ADDR", p, parse_socket_addr);
        let turn_urls = parse_key(raw, "TURN_URLS", p, |t| {
            comma_list(t)
                .map(|u| {
                    if u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:") {
                        Ok(u.to_string())
                    } else {
                        Err(format!("`{u}` is not a turn:, turns: or stun: URL"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let trusted_proxies = parse_key(raw, "TRUSTED_PROXIES", p, |t| {
            comma_list(t)
                .map(|cidr| {
                    cidr.parse::<IpNet>()
                        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            format!("`{cidr}` is not an IP address or CIDR such as 10.0.0.0/8")
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let docs_enabled = parse_key(raw, "DOCS_ENABLED", p, parse_bool);
        let migrate_on_start = parse_key(raw, "MIGRATE_ON_START", p, parse_bool);
        let log_format = parse_key(raw, "LOG_FORMAT", p, |t| match t {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{t}` is not a log format: use text or json")),
        });
        let max_body_bytes = parse_key(raw, "MAX_BODY_BYTES", p, |t| match t.parse::<usize>() {
            Ok(n) if n >= 1024 => Ok(n),
            _ => Err(format!("`{t}` is not a byte count of at least 1024")),
        });
        let request_timeout = parse_key(raw, "REQUEST_TIMEOUT_SECONDS", p, parse_seconds);
        let sign_in_quota = parse_quota(raw, "SIGN_IN_RATE_PER_MINUTE", "SIGN_IN_RATE_BURST", p);
        let claim_quota = parse_quota(raw, "CLAIM_RATE_PER_MINUTE", "CLAIM_RATE_BURST", p);
        let shutdown_grace = parse_key(raw, "SHUTDOWN_GRACE_SECONDS", p, |t| {
            match t.parse::<u64>() {
                Ok(secs) if secs <= 60 => Ok(Duration::from_secs(secs)),
                _ => Err(format!("`{t}` is not a number of seconds from 0 to 60")),
            }
        });

        if problems.len() > before {
            return None;
        }
        // Every `parse_key` above with a default returned `Some` when no
        // problem was recorded.
        Some(Config {
            bind: bind?,
            allow_public_bind: allow_public_bind?,
            public_url: public_url?,
            tls,
            database_url,
            migrate_on_start: migrate_on_start?,
            rpc_url,
            chain_id: chain_id?,
            revenue_address,
            token_address,
            confirmations: confirmations?,
            price_wei_per_gpu_hour: price_wei_per_gpu_hour?,
            price_token_per_gpu_hour: price_token_per_gpu_hour?,
            tiers,
            chain_poll: chain_poll?,
            deposit_start_block,
            token_ttl: token_ttl?,
            admin_token: secret("ADMIN_TOKEN"),
            launcher_urls,
            launcher_token: secret("LAUNCHER_TOKEN"),
            launcher_bind: launcher_bind?,
            launcher_host,
            session_image: session_image?,
            session_memory_bytes: session_memory_bytes?,
            session_nano_cpus: session_nano_cpus?,
            session_pids_limit: session_pids_limit?,
            session_env_allowlist,
            session_stop_grace: session_stop_grace?,
            gpus: gpus?,
            billing_interval: billing_interval?,
            presence_timeout: presence_timeout?,
            metrics_addr,
            turn_urls,
            turn_secret: secret("TURN_SECRET"),
            webrtc_udp_ip: webrtc_udp_ip
                .unwrap_or_else(|| bind.map_or(IpAddr::from([127, 0, 0, 1]), |b| b.ip())),
            webrtc_max_fps: webrtc_max_fps?,
            webrtc_bitrate_bps: webrtc_bitrate_kbps? * 1000,
            trusted_proxies,
            docs_enabled: docs_enabled?,
            log_format: log_format?,
            max_body_bytes: max_body_bytes?,
            request_timeout: request_timeout?,
            sign_in_quota: sign_in_quota?,
            claim_quota: claim_quota?,
            shutdown_grace: shutdown_grace?,
        })
    }

    /// True in the production posture (HTTPS).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address `role` listens on.
    pub fn listen_addr(&self, role: Role) -> SocketAddr {
        match role {
            Role::Serve => self.bind,
            Role::Launcher => self.launcher_bind,
        }
    }

    /// Checks the security posture of DESIGN §8 for `role`.
    fn check_posture(&self, role: Role, problems: &mut Vec<Problem>, warnings: &mut Vec<String>) {
        let (bind_key, addr) = match role {
            Role::Serve => ("BIND", self.bind),
            Role::Launcher => ("LAUNCHER_BIND", self.launcher_bind),
        };
        if !addr.ip().is_loopback() && !self.allow_public_bind {
            problems.push(Problem::new(
                bind_key,
                format!(
                    "{addr} is not a loopback address; set DESKGATE_ALLOW_PUBLIC_BIND=true to listen on it \
                     (put TLS in front: set DESKGATE_TLS_CERT and DESKGATE_TLS_KEY), or bind 127.0.0.1"
                ),
            ));
        }

        if role == Role::Serve {
            if self.database_url.is_none() {
                problems.push(Problem::new(
                    "DATABASE_URL",
                    "is not set: point it at PostgreSQL (postgres://user:password@host:5432/deskgate); `make run` starts a local one",
                ));
            }
            if self.rpc_url.is_none() {
                problems.push(Problem::new(
                    "RPC_URL",
                    "is not set: point it at an Ethereum JSON-RPC node; `make run` starts a local anvil",
                ));
            }
            if self.is_tls() && self.public_url.scheme() != "https" {
                problems.push(Problem::new(
                    "PUBLIC_URL",
                    "must be an https:// URL when TLS is on (browsers reach the gate over HTTPS)",
                ));
            }
        }

        // The gate's own Docker is host 0; a gate with launchers runs no containers.
        if role == Role::Serve
            && self.launcher_urls.is_empty()
            && self.launcher_host.is_some_and(|host| host != 0)
        {
            problems.push(Problem::new(
                "LAUNCHER_HOST",
                "is a `deskgate launcher` setting; a gate on local Docker is host 0: unset it",
            ));
        }

        let runs_containers = role == Role::Launcher || self.launcher_urls.is_empty();
        if self.is_tls() && runs_containers && !self.session_image.contains("@sha256:") {
            problems.push(Problem::new(
                "SESSION_IMAGE",
                format!(
                    "`{}` is not pinned by digest; with TLS on use repo@sha256:<digest> \
                     (`docker image inspect --format '{{{{index .RepoDigests 0}}}}' IMAGE` prints it)",
                    self.session_image
                ),
            ));
        }

        // The secrets this role needs, and whether each is needed at all.
        let mut needed: Vec<(&'static str, Option<&Secret>, &str)> = Vec::new();
        match role {
            Role::Serve => {
                if self.admin_token.is_some() {
                    needed.push((
                        "ADMIN_TOKEN",
                        self.admin_token.as_ref(),
                        "the admin API is on",
                    ));
                }
                if !self.launcher_urls.is_empty() {
                    needed.push((
                        "LAUNCHER_TOKEN",
                        self.launcher_token.as_ref(),
                        "DESKGATE_LAUNCHER_URLS is set",
                    ));
                }
                if !self.turn_urls.is_empty() {
                    needed.push((
                        "TURN_SECRET",
                        self.turn_secret.as_ref(),
                        "DESKGATE_TURN_URLS is set",
                    ));
                }
            }
            Role::Launcher => {
                needed.push((
                    "LAUNCHER_TOKEN",
                    self.launcher_token.as_ref(),
                    "the launcher API needs it",
                ));
            }
        }
        for (name, secret, why_needed) in needed {
            match secret.map(Secret::weakness) {
                None => problems.push(Problem::new(
                    name,
                    format!(
                        "is not set but {why_needed}: generate one with `openssl rand -hex 32`"
                    ),
                )),
                Some(Some(weakness)) if self.is_tls() => problems.push(Problem::new(
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

        if self.is_tls()
            && role == Role::Serve
            && let Some(db) = &self.database_url
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";
    const PINNED_IMAGE: &str =
        "deskgate/desktop@sha256:4f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![
            (
                "DESKGATE_DATABASE_URL".to_string(),
                "postgres://u:pw@127.0.0.1:5432/d".to_string(),
            ),
            (
                "DESKGATE_RPC_URL".to_string(),
                "http://127.0.0.1:8545".to_string(),
            ),
        ];
        all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        all
    }

    fn variables(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.variable.as_str()).collect()
    }

    #[test]
    fn defaults_load_without_problems() {
        let loaded = load(None, env(&[]), Role::Serve);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let config = loaded.config.expect("config");
        assert_eq!(config.bind, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(config.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(config.gpus, GpuSelection::Auto);
        assert!(config.admin_token.is_none());
    }

    #[test]
    fn rate_limits_default_and_are_checked() {
        let config = load(None, env(&[]), Role::Serve).config.expect("config");
        assert_eq!(config.sign_in_quota.to_string(), "10/min burst 5");
        assert_eq!(config.claim_quota.to_string(), "30/min burst 10");

        let loaded = load(
            None,
            env(&[
                ("DESKGATE_SIGN_IN_RATE_PER_MINUTE", "120"),
                ("DESKGATE_CLAIM_RATE_BURST", "1"),
            ]),
            Role::Serve,
        );
        let config = loaded.config.expect("config");
        assert_eq!(config.sign_in_quota.to_string(), "120/min burst 5");
        assert_eq!(config.claim_quota.to_string(), "30/min burst 1");

        let loaded = load(
            None,
            env(&[
                ("DESKGATE_SIGN_IN_RATE_BURST", "0"),
                ("DESKGATE_CLAIM_RATE_PER_MINUTE", "lots"),
            ]),
            Role::Serve,
        );
        assert!(loaded.config.is_none());
        assert_eq!(
            variables(&loaded.problems),
            [
                "DESKGATE_SIGN_IN_RATE_BURST",
                "DESKGATE_CLAIM_RATE_PER_MINUTE"
            ]
        );
    }

    #[test]
    fn webrtc_settings_default_from_bind_and_are_checked() {
        let config = load(None, env(&[]), Role::Serve).config.expect("config");
        assert_eq!(config.webrtc_udp_ip, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            (config.webrtc_max_fps, config.webrtc_bitrate_bps),
            (30, 2_500_000)
        );
        let config = load(
            None,
            env(&[
                ("DESKGATE_BIND", "192.0.2.7:8080"),
                ("DESKGATE_ALLOW_PUBLIC_BIND", "true"),
                ("DESKGATE_WEBRTC_BITRATE_KBPS", "800"),
            ]),
            Role::Serve,
        )
        .config
        .expect("config");
        assert_eq!(config.webrtc_udp_ip, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(config.webrtc_bitrate_bps, 800_000);

        let loaded = load(
            None,
            env(&[
                ("DESKGATE_WEBRTC_UDP_IP", "localhost"),
                ("DESKGATE_WEBRTC_MAX_FPS", "0"),
                ("DESKGATE_WEBRTC_BITRATE_KBPS", "99"),
            ]),
            Role::Serve,
        );
        let named: Vec<_> = loaded
            .problems
            .iter()
            .map(|p| p.variable.as_str())
            .collect();
        assert_eq!(
            named,
            [
                "DESKGATE_WEBRTC_UDP_IP",
                "DESKGATE_WEBRTC_MAX_FPS",
                "DESKGATE_WEBRTC_BITRATE_KBPS"
            ]
        );
    }

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
    fn every_bad_value_is_reported_at_once_naming_its_variable() {
        let loaded = load(
            None,
            env(&[
                ("DESKGATE_BIND", "localhost"),
                ("DESKGATE_CHAIN_ID", "mainnet"),
                ("DESKGATE_GPUS", "fake:x"),
                ("DESKGATE_LOG_FORMAT", "xml"),
                ("DESKGATE_BILLING_INTERVAL_SECONDS", "0"),
                ("DESKGATE_REVENUE_ADDRESS", "0x1234"),
            ]),
            Role::Serve,
        );
        assert!(loaded.config.is_none());
        let vars = variables(&loaded.problems);
        for expected in [
            "DESKGATE_BIND",
            "DESKGATE_CHAIN_ID",
            "DESKGATE_GPUS",
            "DESKGATE_LOG_FORMAT",
            "DESKGATE_BILLING_INTERVAL_SECONDS",
            "DESKGATE_REVENUE_ADDRESS",
        ] {
            assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
        }
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
    fn half_a_tls_pair_is_a_problem() {
        let loaded = load(None, env(&[("DESKGATE_TLS_CERT", "/c.pem")]), Role::Serve);
        assert_eq!(variables(&loaded.problems), ["DESKGATE_TLS_KEY"]);
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
        assert_eq!(loaded.config.unwrap().launcher_host, Some(2));

        let bad = load(None, env(&[("DESKGATE_LAUNCHER_HOST", "-1")]), Role::Serve);
        assert_eq!(variables(&bad.problems), ["DESKGATE_LAUNCHER_HOST"]);
        let local = load(None, env(&[("DESKGATE_LAUNCHER_HOST", "1")]), Role::Serve);
        assert_eq!(variables(&local.problems), ["DESKGATE_LAUNCHER_HOST"]);
        let zero = load(None, env(&[("DESKGATE_LAUNCHER_HOST", "0")]), Role::Serve);
        assert!(zero.problems.is_empty(), "{:?}", zero.problems);
    }

    #[test]
    fn the_launcher_always_needs_its_token() {
        let loaded = load(None, Vec::new(), Role::Launcher);
        assert_eq!(variables(&loaded.problems), ["DESKGATE_LAUNCHER_TOKEN"]);
    }

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
        assert_eq!(config.bind.port(), 9000);
        assert_eq!(config.chain_id, 31337);
        assert_eq!(config.confirmations, Confirmations::Blocks(5));
        assert_eq!(config.launcher_urls.len(), 2);
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

    #[test]
    fn addresses_must_carry_a_valid_checksum_when_mixed_case() {
        assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_ok());
        assert!(parse_address("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed").is_ok());
        assert!(parse_address("0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
    }

    #[test]
    fn tiers_parse_sorted_and_refuse_nonsense() {
        let tiers = parse_tiers("10000e18:25, 1000e18:10").unwrap();
        assert_eq!(tiers.len(), 2);
        assert_eq!(
            tiers[0].min_balance,
            U256::from(1000u64) * U256::from(10u64).pow(U256::from(18))
        );
        assert_eq!((tiers[0].percent, tiers[1].percent), (10, 25));
        assert!(
            parse_tiers("1000:10,2000:5").is_err(),
            "a bigger balance must not get less"
        );
        assert!(parse_tiers("1000:95").is_err());
        assert!(parse_tiers("1000").is_err());
        assert!(parse_tiers("x:10").is_err());
        assert_eq!(
            parse_price("1e15"),
            Ok(U256::from(1_000_000_000_000_000u64))
        );
        assert!(parse_price("0").is_err());
        assert!(parse_price("1e99").is_err(), "beyond U256");
    }

    #[test]
    fn confirmations_are_a_count_or_finalized() {
        let loaded = load(
            None,
            env(&[("DESKGATE_CONFIRMATIONS", "finalized")]),
            Role::Serve,
        );
        assert_eq!(
            loaded.config.unwrap().confirmations,
            Confirmations::Finalized
        );
        let loaded = load(
            None,
            env(&[("DESKGATE_CONFIRMATIONS", "soon")]),
            Role::Serve,
        );
        assert!(
            loaded
                .problems
                .iter()
                .any(|p| p.to_string().contains("finalized"))
        );
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
        assert_eq!(config.session_memory_bytes, 512 << 20);
        assert_eq!(config.session_env_allowlist, ["LANG", "TZ"]);
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
