//! The `deskgate` command line: the binary edge, where errors become exit
//! codes and messages.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use deskgate::chain::AlloyChain;
use deskgate::config::Confirmations;
use deskgate::config::{self, Config, Loaded, Role};
use deskgate::deposit_store::{CreditListener, PgDepositBook};
use deskgate::desktop::{DesktopDialer, DockerExecDialer};
use deskgate::docker_launcher::{DockerLauncher, LauncherSettings};
use deskgate::gate::Gate;
use deskgate::http::account::Offer;
use deskgate::http::api::{Api, DepositDesk};
use deskgate::http::sessions::SessionDesk;
use deskgate::http::{GateState, Limits};
use deskgate::ledger::PgLedger;
use deskgate::pricing::{DepositPricer, Pricing};
use deskgate::readiness::Dependency;
use deskgate::server::{self, Service};
use deskgate::session_store::PgSessionStore;
use deskgate::sign_in::SignIn;
use deskgate::tickets::TicketBook;
use deskgate::tiers::{TierOracle, TieredPricer};
use deskgate::{db, gpu, launcher_pool, launcher_service, telemetry};
use deskgate_actors::chain_watcher::{ChainWatcherArgs, Required, spawn_chain_watcher};
use deskgate_actors::ports::GpuAddr;
use deskgate_actors::session::SessionSettings;

/// How often NVML is asked whether the GPUs are healthy.
const GPU_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a remote launcher's health check may take.
const LAUNCHER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "deskgate",
    version,
    about = "Rent GPU desktops to browser users who pay with an Ethereum wallet"
)]
struct Cli {
    /// TOML file with settings (lower-case DESKGATE_* names without the
    /// prefix); environment variables win over it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gate: HTTP API, actor tree, billing.
    Serve,
    /// Run the launcher service for this GPU host.
    Launcher,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print this host's GPU inventory.
    Gpus,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and every
    /// problem found; exit 1 if there is any.
    Check {
        /// Which program to check the configuration for.
        #[arg(long = "for", value_enum, default_value = "serve")]
        role: Role,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process (server, RPC client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let file = cli.config.as_deref();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { role },
        } => config_check(config::load(file, std::env::vars(), role), role),
        Command::Gpus => print_gpus(config::load(file, std::env::vars(), Role::Serve)),
        Command::Serve => start(
            config::load(file, std::env::vars(), Role::Serve),
            Role::Serve,
        ),
        Command::Launcher => start(
            config::load(file, std::env::vars(), Role::Launcher),
            Role::Launcher,
        ),
        Command::Migrate => migrate(config::load(file, std::env::vars(), Role::Serve)),
    }
}

fn config_check(loaded: Loaded, role: Role) -> ExitCode {
    let posture = match &loaded.config {
        Some(c) if c.is_tls() => "production (TLS on)",
        Some(_) => "development (no TLS: loopback only unless allowed)",
        None => "unknown (the configuration does not parse)",
    };
    println!(
        "deskgate configuration for `{}` — posture: {posture}",
        role_name(role)
    );
    for (name, value, source) in loaded.raw.redacted_entries() {
        println!("  {name:<34} {value}  ({source})");
    }
    for warning in &loaded.warnings {
        println!("warning: {warning}");
    }
    if loaded.problems.is_empty() {
        println!("no problems found");
        ExitCode::SUCCESS
    } else {
        for problem in &loaded.problems {
            println!("problem: {problem}");
        }
        println!("{} problem(s) found", loaded.problems.len());
        ExitCode::FAILURE
    }
}

fn print_gpus(loaded: Loaded) -> ExitCode {
    let Some(config) = loaded.config else {
        return refuse(&loaded.problems);
    };
    match gpu::inventory(&config.gpus) {
        Ok(gpus) => {
            print!("{}", gpu::render_table(&gpus));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("deskgate: {err}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(loaded: Loaded) -> ExitCode {
    let Some(url) = loaded.config.as_ref().and_then(|c| c.database_url.clone()) else {
        eprintln!(
            "deskgate: DESKGATE_DATABASE_URL is not set: point it at PostgreSQL (postgres://user:password@host:5432/deskgate)"
        );
        return ExitCode::from(2);
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(db::migrate(&url)).map_err(|e| e.to_string()));
    match result {
        Ok(applied) if applied.is_empty() => {
            println!("the schema is up to date; nothing to apply");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            for version in &applied {
                println!("applied {version}");
            }
            println!("{} migration(s) applied", applied.len());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("deskgate: {err}");
            ExitCode::FAILURE
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Serve => "serve",
        Role::Launcher => "launcher",
    }
}

fn refuse(problems: &[config::Problem]) -> ExitCode {
    eprintln!("deskgate: refusing to start; fix the configuration:");
    for problem in problems {
        eprintln!("  - {problem}");
    }
    eprintln!("(`deskgate config check` shows the effective configuration)");
    ExitCode::from(2)
}

fn start(loaded: Loaded, role: Role) -> ExitCode {
    let (config, warnings) = match loaded.into_result() {
        Ok(ok) => ok,
        Err(problems) => return refuse(&problems),
    };
    telemetry::init_logging(config.log_format);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("deskgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match role {
            Role::Serve => serve(config).await,
            Role::Launcher => launcher(config).await,
        }
    });
    // Do not wait for stray blocking tasks: shutdown must stay prompt.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("deskgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
    }
}

async fn log_inventory(config: &Config) -> anyhow::Result<()> {
    let selection = config.gpus.clone();
    let gpus = tokio::task::spawn_blocking(move || gpu::inventory(&selection)).await??;
    tracing::info!(count = gpus.len(), selection = %config.gpus, fake = gpus.iter().any(|g| g.fake), "GPU inventory");
    Ok(())
}

fn metrics_listener(
    config: &Config,
) -> anyhow::Result<
    Option<(
        std::net::SocketAddr,
        metrics_exporter_prometheus::PrometheusHandle,
    )>,
> {
    config
        .metrics_addr
        .map(|addr| {
            Ok((
                addr,
                telemetry::install_metrics().context("cannot install the metrics recorder")?,
            ))
        })
        .transpose()
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // With remote launchers the GPUs are theirs; the gate host may have none.
    if config.launcher_urls.is_empty() {
        log_inventory(&config).await?;
    }
    let mut dependencies = Vec::new();
    let mut api = None;
    if let Some(url) = &config.database_url {
        let pool = db::pool(url)?;
        dependencies.push(Dependency::Postgres(pool.clone()));
        let built = Arc::new(build_api(&config, pool.clone()).await?);
        tokio::spawn(bring_up_sessions(config.clone(), pool, built.clone()));
        api = Some(built);
    }
    if let Some(url) = &config.rpc_url {
        dependencies.push(
            Dependency::chain(url.expose(), config.chain_id)
                .context("DESKGATE_RPC_URL is not a valid URL")?,
        );
    }
    if config.launcher_urls.is_empty() {
        let docker = deskgate::docker::connect()
            .await
            .context("cannot set up the Docker client (check DOCKER_HOST)")?;
        dependencies.push(Dependency::Docker(docker));
    } else {
        let client = reqwest::Client::builder()
            .timeout(LAUNCHER_PROBE_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        for url in &config.launcher_urls {
            dependencies.push(Dependency::Launcher {
                url: url.clone(),
                client: client.clone(),
            });
        }
    }
    let state = GateState {
        dependencies: Arc::new(dependencies),
        api,
    };
    tracing::info!(public_url = %config.public_url, tls = config.is_tls(), "starting the gate");
    let edge = deskgate::http::EdgePolicy::from_config(&config);
    let app = deskgate::http::gate_router(state, limits(&config), edge);
    server::run(
        Service {
            app,
            addr: config.bind,
            variable: "DESKGATE_BIND",
        },
        config.tls.as_ref(),
        metrics_listener(&config)?,
        config.shutdown_grace,
    )
    .await?;
    Ok(())
}

/// The user API: sign-in always (it needs only the database), deposits when
/// an RPC node and a revenue address are configured; then the chain watcher
/// runs in the background and credits deposits nobody asked about.
async fn build_api(config: &Config, pool: db::DbPool) -> anyhow::Result<Api> {
    let sign_in = SignIn::from_config(pool.clone(), config).context("cannot set up sign-in")?;
    let sessions: Arc<std::sync::OnceLock<SessionDesk>> = Arc::default();
    // A credited deposit extends the runway of the wallet's running session.
    let credited_sessions = sessions.clone();
    let on_credit: CreditListener = Arc::new(move |wallet| {
        if let Some(desk) = credited_sessions.get() {
            desk.gate.credit_changed(wallet.clone());
        }
    });
    let deposits = match (&config.rpc_url, config.revenue_address) {
        (Some(rpc), Some(revenue)) => {
            let url =
                url::Url::parse(rpc.expose()).context("DESKGATE_RPC_URL is not a valid URL")?;
            let pricing = Pricing::from_config(config);
            let oracle = TierOracle::new(
                alloy::providers::RootProvider::new_http(url.clone()),
                config.token_address,
                pricing.clone(),
                config.confirmations,
            );
            let pricer = Arc::new(TieredPricer::new(pricing, Arc::new(oracle)));
            let book = PgDepositBook::new(
                pool.clone(),
                PgLedger::new(pool.clone()),
                pricer.clone() as Arc<dyn DepositPricer>,
                config.chain_id,
            )
            .on_credit(on_credit);
            let required = match config.confirmations {
                Confirmations::Blocks(n) => Required::Blocks(n),
                Confirmations::Finalized => Required::Finalized,
            };
            // One adapter serves the watcher and the API's single checks.
            let chain = Arc::new(AlloyChain::new(url, revenue, config.token_address));
            spawn_chain_watcher(
                ChainWatcherArgs {
                    reader: chain.clone(),
                    book: Arc::new(book.clone()),
                    required,
                    poll: config.chain_poll,
                    start_block: config.deposit_start_block,
                },
                None,
            )
            .await
            .context("cannot start the chain watcher")?;
            Some(DepositDesk {
                chain,
                book,
                required,
                pricer,
            })
        }
        _ => {
            tracing::warn!(
                "deposits are off: set DESKGATE_RPC_URL and DESKGATE_REVENUE_ADDRESS to accept them"
            );
            None
        }
    };
    Ok(Api {
        sign_in,
        deposits,
        https: config.is_tls(),
        sessions,
        offer: Offer::from_config(config),
        ledger: PgLedger::new(pool.clone()),
        pool,
        admin_token: config.admin_token.clone(),
        tickets: TicketBook::new(),
        docs_enabled: config.docs_enabled,
        media: deskgate::http::media::MediaDesk::from_config(config),
    })
}

/// The actor tree on local Docker, or across the GPU hosts of
/// `DESKGATE_LAUNCHER_URLS` (host = position in the list) when it is set.
async fn session_desk(config: &Config, pool: db::DbPool) -> anyhow::Result<Option<SessionDesk>> {
    let settings = SessionSettings {
        billing_interval: config.billing_interval,
        presence_timeout: config.presence_timeout,
        ..SessionSettings::default()
    };
    let desk = |gate, desktops| SessionDesk {
        gate,
        store: PgSessionStore::new(pool.clone()),
        public_origin: config.public_url.origin().ascii_serialization(),
        presence_every: (config.presence_timeout / 3).max(Duration::from_secs(1)),
        desktops,
    };
    if !config.launcher_urls.is_empty() {
        // The launchers own their GPUs: no local NVML health feed here; a
        // GPU its launcher reported unhealthy starts unhealthy.
        let token = config
            .launcher_token
            .clone()
            .context("DESKGATE_LAUNCHER_TOKEN is not set")?;
        let found = launcher_pool::discover(&config.launcher_urls, &token).await?;
        tracing::info!(
            hosts = found.pool.len(),
            gpus = found.gpus.len(),
            "scheduling across remote launchers"
        );
        let gate = Gate::start(pool.clone(), Arc::new(found.pool), found.gpus, settings).await?;
        for (gpu, reason) in found.unhealthy {
            gate.set_health(gpu, Some(reason));
        }
        return Ok(Some(desk(gate, None)));
    }
    let selection = config.gpus.clone();
    let indices: Vec<u32> = tokio::task::spawn_blocking(move || gpu::inventory(&selection))
        .await??
        .iter()
        .map(|g| g.index)
        .collect();
    let gpus = indices
        .iter()
        .map(|&index| GpuAddr { host: 0, index })
        .collect();
    let launcher = Arc::new(docker_launcher(config).await?);
    let desktops: Arc<dyn DesktopDialer> = Arc::new(DockerExecDialer::new(launcher.clone()));
    let gate = Gate::start(pool.clone(), launcher, gpus, settings).await?;
    let health_gate = gate.clone();
    gpu::spawn_health_feed(
        config.gpus.clone(),
        indices,
        GPU_HEALTH_INTERVAL,
        move |index, unhealthy| health_gate.set_health(GpuAddr { host: 0, index }, unhealthy),
    );
    Ok(Some(desk(gate, Some(desktops))))
}

/// Migrates (unless disabled), then starts the session tree, retrying with
/// backoff while PostgreSQL or Docker is not there yet; session routes answer
/// 503 until it runs.
async fn bring_up_sessions(config: Config, pool: db::DbPool, api: Arc<Api>) {
    if config.migrate_on_start
        && let Some(url) = &config.database_url
    {
        migrate_until_done(url.clone()).await;
    }
    let mut delay = Duration::from_secs(1);
    loop {
        match session_desk(&config, pool.clone()).await {
            Ok(Some(desk)) => {
                let _ = api.sessions.set(desk);
                tracing::info!("sessions are open");
                return;
            }
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "cannot start the session tree yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Applies pending migrations, retrying with backoff while PostgreSQL is
/// unreachable (in a compose stack it may start after the gate). Until it
/// succeeds `/readyz` reports the schema as behind.
async fn migrate_until_done(url: deskgate::secret::Secret) {
    let mut delay = Duration::from_secs(1);
    loop {
        match db::migrate(&url).await {
            Ok(applied) => {
                if applied.is_empty() {
                    tracing::info!("database schema is current");
                } else {
                    tracing::info!(applied = ?applied, "database migrations applied");
                }
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "cannot migrate the database yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The local Docker launcher with the session settings of `config`.
async fn docker_launcher(config: &Config) -> anyhow::Result<DockerLauncher> {
    let docker = deskgate::docker::connect()
        .await
        .context("cannot set up the Docker client (check DOCKER_HOST)")?;
    docker
        .ping()
        .await
        .context("Docker does not answer (is dockerd running? check DOCKER_HOST)")?;
    let settings = LauncherSettings::from_config(config, |name| std::env::var(name).ok());
    Ok(DockerLauncher::new(docker, settings)?)
}

async fn launcher(config: Config) -> anyhow::Result<()> {
    log_inventory(&config).await?;
    let token = config
        .launcher_token
        .clone()
        .context("DESKGATE_LAUNCHER_TOKEN is not set")?;
    let selection = config.gpus.clone();
    let gpu_indices = tokio::task::spawn_blocking(move || gpu::inventory(&selection))
        .await??
        .iter()
        .map(|g| g.index)
        .collect();
    let launcher = Arc::new(docker_launcher(&config).await?);
    // A launcher killed mid-flight left containers behind: keep the running
    // ones, clear the rest, and tell the gate about their exits.
    let recovered = launcher
        .recover()
        .await
        .context("cannot reconcile session containers with Docker")?;
    tracing::info!(
        adopted = recovered.adopted.len(),
        exited = recovered.exited.len(),
        stray_networks = recovered.stray_networks,
        "session containers recovered"
    );
    let exits = Arc::new(launcher_service::ExitLog::default());
    exits.follow(launcher.as_ref());
    for exit in &recovered.exited {
        exits.record(exit);
    }
    let state = Arc::new(launcher_service::LauncherState {
        token,
        gpus: config.gpus.clone(),
        gpu_indices,
        launcher,
        exits,
    });
    let app = launcher_service::router(state, limits(&config));
    server::run(
        Service {
            app,
            addr: config.launcher_bind,
            variable: "DESKGATE_LAUNCHER_BIND",
        },
        config.tls.as_ref(),
        metrics_listener(&config)?,
        config.shutdown_grace,
    )
    .await?;
    Ok(())
}
