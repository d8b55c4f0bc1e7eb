//! `deskgate serve`: the gate, built from its configuration.
//!
//! Order matters and is what makes the gate start in any order with its
//! dependencies (a compose stack starts everything at once):
//!
//! 1. the HTTP API is up at once: `/healthz` answers, `/readyz` reports each
//!    dependency, sign-in and deposits work as soon as PostgreSQL does;
//! 2. in the background, migrations (unless disabled), then the session tree
//!    on the launcher backend, retried with backoff until PostgreSQL and the
//!    backend answer. Session routes answer 503 until then.
//!
//! The launcher backend is chosen once, by [`LauncherKind`]; nothing else
//! here or elsewhere asks which backend runs.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deskgate_actors::chain_watcher::{ChainWatcherArgs, Required, spawn_chain_watcher};
use deskgate_actors::ports::{EndReason, GpuAddr, SessionId};
use deskgate_actors::protocol::JoiningGpu;
use deskgate_actors::session::SessionSettings;

use super::{
    AppError, Step, docker_desktops, docker_launcher, limits, log_inventory, serve_until_signal,
};
use crate::auth::SignIn;
use crate::auth::tickets::TicketBook;
use crate::config::{Config, Confirmations, LauncherKind, Role};
use crate::db;
use crate::http::readiness::Dependency;
use crate::http::state::{ApiState, DepositsState, Offer, SessionsState, ViewersState};
use crate::http::{EdgePolicy, GateState, gate_router};
use crate::launcher::desktop::{DesktopMedia, NoDesktops};
use crate::launcher::gpu;
use crate::launcher::remote::fleet::{DnsResolver, Fleet, GpuPoolControl};
use crate::launcher::remote::host_book::HostBook;
use crate::launcher::remote::pool;
use crate::launcher::simulated::SimulatedLauncher;
use crate::money::chain::AlloyChain;
use crate::money::deposits::{CreditListener, PgDepositBook};
use crate::money::ledger::PgLedger;
use crate::money::pricing::{DepositPricer, Pricing};
use crate::money::tiers::{TierOracle, TieredPricer};
use crate::platform::backoff::Backoff;
use crate::platform::secret::Secret;
use crate::platform::server::Service;
use crate::platform::telemetry::error_chain;
use crate::sessions::store::PgSessionStore;
use crate::sessions::tree::SessionTree;

/// How often NVML is asked whether the GPUs are healthy.
const GPU_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a remote launcher's health check may take.
const LAUNCHER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// First and longest wait between attempts to migrate or to start the
/// session tree while a dependency is not there yet.
const START_RETRY_FIRST: Duration = Duration::from_secs(1);
const START_RETRY_CEILING: Duration = Duration::from_secs(30);

/// Runs the gate until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let backend = &config.launcher.kind;
    // With remote launchers the GPUs are theirs; the gate host may have none.
    if !matches!(
        backend,
        LauncherKind::Remote(_) | LauncherKind::Discovered(_)
    ) {
        log_inventory(&config).await?;
    }
    if *backend == LauncherKind::Simulated {
        tracing::warn!(
            backend = "simulated",
            "launcher backend SIMULATED: sessions start no desktops (DESKGATE_LAUNCHER_BACKEND=simulated, for benchmarks)"
        );
    }
    let mut dependencies = Vec::new();
    let mut api = None;
    if let Some(url) = &config.database.url {
        let pool = db::pool(url)?;
        dependencies.push(Dependency::Postgres(pool.clone()));
        let built = Arc::new(build_api(&config, pool.clone()).await?);
        tokio::spawn(bring_up_sessions(config.clone(), pool, built.clone()));
        api = Some(built);
    }
    if let Some(url) = &config.chain.rpc_url {
        dependencies.push(
            Dependency::chain(url.expose(), config.chain.id)
                .step("DESKGATE_RPC_URL is not a valid URL")?,
        );
    }
    dependencies.extend(backend_dependencies(backend).await?);
    let state = GateState {
        dependencies: Arc::new(dependencies),
        api,
    };
    tracing::info!(public_url = %config.server.public_url, tls = config.is_tls(), "starting the gate");
    if !crate::http::web::is_built() {
        tracing::warn!("no web client in this build: `/` explains how to build it (make web)");
    }
    let app = gate_router(state, limits(&config), EdgePolicy::from_config(&config));
    let service = Service {
        app,
        addr: config.server.bind,
        variable: "DESKGATE_BIND",
    };
    serve_until_signal(&config, service).await
}

/// What `/readyz` checks of the backend: the Docker Engine, or every launcher.
async fn backend_dependencies(backend: &LauncherKind) -> Result<Vec<Dependency>, AppError> {
    match backend {
        LauncherKind::Simulated => Ok(vec![Dependency::Simulated]),
        LauncherKind::LocalDocker => {
            let docker = crate::launcher::docker::connect()
                .await
                .step("cannot set up the Docker client (check DOCKER_HOST)")?;
            Ok(vec![Dependency::Docker(docker)])
        }
        // Discovered hosts come and go; `/admin/hosts` shows each one.
        LauncherKind::Discovered(_) => Ok(Vec::new()),
        LauncherKind::Remote(urls) => {
            let client = reqwest::Client::builder()
                .timeout(LAUNCHER_PROBE_TIMEOUT)
                .build()
                .step("cannot build the HTTP client")?;
            Ok(urls
                .iter()
                .map(|url| Dependency::Launcher {
                    url: url.clone(),
                    client: client.clone(),
                })
                .collect())
        }
    }
}

/// The user API: sign-in always (it needs only the database), deposits when
/// an RPC node and a revenue address are configured; then the chain watcher
/// runs in the background and credits deposits nobody asked about.
async fn build_api(config: &Config, pool: db::DbPool) -> Result<ApiState, AppError> {
    let sign_in = SignIn::from_config(pool.clone(), config).step("cannot set up sign-in")?;
    let sessions: Arc<OnceLock<SessionsState>> = Arc::default();
    // A credited deposit extends the runway of the wallet's running session.
    let credited_sessions = sessions.clone();
    let on_credit: CreditListener = Arc::new(move |wallet| {
        if let Some(sessions) = credited_sessions.get() {
            sessions.tree.credit_changed(wallet.clone());
        }
    });
    let deposits = match (&config.chain.rpc_url, config.chain.revenue_address) {
        (Some(rpc), Some(revenue)) => {
            Some(build_deposits(config, pool.clone(), rpc, revenue, on_credit).await?)
        }
        _ => {
            tracing::warn!(
                "deposits are off: set DESKGATE_RPC_URL and DESKGATE_REVENUE_ADDRESS to accept them"
            );
            None
        }
    };
    let fleet = discovery_fleet(config, &pool)?;
    Ok(ApiState {
        sign_in,
        deposits,
        https: config.is_tls(),
        sessions,
        offer: Offer::from_config(config),
        ledger: PgLedger::new(pool.clone()),
        pool,
        admin_token: config.auth.admin_token.clone(),
        tickets: TicketBook::new(),
        docs_enabled: config.server.docs_enabled,
        fleet,
        viewers: ViewersState::from_config(config),
    })
}

/// With `DESKGATE_LAUNCHER_DISCOVERY`, the fleet of GPU hosts, discovering
/// from now on: the operator sees the hosts before the session tree runs.
fn discovery_fleet(config: &Config, pool: &db::DbPool) -> Result<Option<Arc<Fleet>>, AppError> {
    let LauncherKind::Discovered(target) = &config.launcher.kind else {
        return Ok(None);
    };
    let token = config
        .launcher
        .token
        .clone()
        .ok_or(AppError::Missing("DESKGATE_LAUNCHER_TOKEN"))?;
    let fleet = Fleet::new(
        Box::new(DnsResolver(target.clone())),
        token,
        HostBook::new(pool.clone()),
    );
    fleet.discover();
    tracing::info!(discovery = %target, "discovering GPU hosts");
    Ok(Some(fleet))
}

/// Deposits: tiered pricing, the deposit book on the ledger, and the chain
/// watcher that credits them, all sharing one chain adapter.
async fn build_deposits(
    config: &Config,
    pool: db::DbPool,
    rpc: &Secret,
    revenue: alloy::primitives::Address,
    on_credit: CreditListener,
) -> Result<DepositsState, AppError> {
    let url = url::Url::parse(rpc.expose()).step("DESKGATE_RPC_URL is not a valid URL")?;
    let pricing = Pricing::from_config(config);
    let oracle = TierOracle::new(
        alloy::providers::RootProvider::new_http(url.clone()),
        config.chain.token_address,
        pricing.clone(),
        config.chain.confirmations,
    );
    let pricer = Arc::new(TieredPricer::new(pricing, Arc::new(oracle)));
    let book = PgDepositBook::new(
        pool,
        pricer.clone() as Arc<dyn DepositPricer>,
        config.chain.id,
    )
    .on_credit(on_credit);
    let required = match config.chain.confirmations {
        Confirmations::Blocks(n) => Required::Blocks(n),
        Confirmations::Finalized => Required::Finalized,
    };
    // One adapter serves the watcher and the API's single checks.
    let chain = Arc::new(AlloyChain::new(url, revenue, config.chain.token_address));
    spawn_chain_watcher(
        ChainWatcherArgs {
            reader: chain.clone(),
            book: Arc::new(book.clone()),
            required,
            poll: config.chain.poll,
            start_block: config.chain.deposit_start_block,
        },
        None,
    )
    .await
    .step("cannot start the chain watcher")?;
    Ok(DepositsState {
        chain,
        book,
        required,
        pricer,
    })
}

/// Migrates (unless disabled), then starts the session tree, retrying with
/// backoff while PostgreSQL or the launcher backend is not there yet; session
/// routes answer 503 until it runs.
async fn bring_up_sessions(config: Config, pool: db::DbPool, api: Arc<ApiState>) {
    if config.database.migrate_on_start
        && let Some(url) = &config.database.url
    {
        migrate_until_done(url).await;
    }
    let mut backoff = Backoff::new(START_RETRY_FIRST, START_RETRY_CEILING);
    loop {
        match session_state(&config, pool.clone(), api.fleet.as_ref()).await {
            Ok(sessions) => {
                let _ = api.sessions.set(sessions);
                tracing::info!("sessions are open");
                return;
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %error_chain(&err), retry_in = ?delay, "cannot start the session tree yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Applies pending migrations, retrying with backoff while PostgreSQL is
/// unreachable (in a compose stack it may start after the gate). Until it
/// succeeds `/readyz` reports the schema as behind.
async fn migrate_until_done(url: &Secret) {
    let mut backoff = Backoff::new(START_RETRY_FIRST, START_RETRY_CEILING);
    loop {
        match db::migrate(url).await {
            Ok(applied) => {
                if applied.is_empty() {
                    tracing::info!("database schema is current");
                } else {
                    tracing::info!(applied = ?applied, "database migrations applied");
                }
                return;
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "cannot migrate the database yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The session tree on the configured backend, and what the session routes
/// need of it.
async fn session_state(
    config: &Config,
    pool: db::DbPool,
    fleet: Option<&Arc<Fleet>>,
) -> Result<SessionsState, AppError> {
    let idle_timeout = config.sessions.idle_timeout;
    let settings = SessionSettings {
        billing_interval: config.sessions.billing_interval,
        presence_timeout: config.sessions.presence_timeout,
        idle_timeout,
        // 60 s of warning, or half of a shorter timeout.
        idle_warning: idle_timeout.map_or(Duration::from_secs(60), |idle| {
            (idle / 2).min(Duration::from_secs(60))
        }),
        ..SessionSettings::default()
    };
    let (tree, desktops) = match (&config.launcher.kind, fleet) {
        (LauncherKind::Discovered(_), Some(fleet)) => {
            discovered_tree(fleet, pool.clone(), settings).await?
        }
        (LauncherKind::Discovered(_), None) => {
            return Err(AppError::Missing("DESKGATE_LAUNCHER_TOKEN"));
        }
        (LauncherKind::LocalDocker, _) => local_docker_tree(config, pool.clone(), settings).await?,
        (LauncherKind::Remote(urls), _) => {
            remote_tree(config, urls, pool.clone(), settings).await?
        }
        (LauncherKind::Simulated, _) => simulated_tree(config, pool.clone(), settings).await?,
    };
    Ok(SessionsState {
        tree,
        store: PgSessionStore::new(pool),
        public_origin: config.server.public_url.origin().ascii_serialization(),
        presence_every: (config.sessions.presence_timeout / 3).max(Duration::from_secs(1)),
        desktops,
    })
}

/// The tree across the GPU hosts of `urls` (host = position in the list). The
/// launchers own their GPUs: no local NVML health feed here; a GPU its
/// launcher reported unhealthy starts unhealthy. Desktops are served by
/// their launchers; this gate needs no Docker access at all.
async fn remote_tree(
    config: &Config,
    urls: &[url::Url],
    pool: db::DbPool,
    settings: SessionSettings,
) -> Result<(SessionTree, Arc<dyn DesktopMedia>), AppError> {
    let token = config
        .launcher
        .token
        .clone()
        .ok_or(AppError::Missing("DESKGATE_LAUNCHER_TOKEN"))?;
    let found = pool::discover(urls, &token).await?;
    tracing::info!(
        hosts = found.pool.len(),
        gpus = found.gpus.len(),
        "scheduling across remote launchers"
    );
    let tree = SessionTree::start(pool, Arc::new(found.pool), found.gpus, settings).await?;
    for (gpu, reason) in found.unhealthy {
        tree.set_health(gpu, Some(reason));
    }
    Ok((tree, Arc::new(found.desktops)))
}

/// The tree across the GPU hosts of `fleet` (see [`Fleet`]): the hosts that
/// answer now are its first pool; hosts met before that do not answer yet
/// make recovery wait for them (or for an operator to declare them gone);
/// hosts that join later are added live.
async fn discovered_tree(
    fleet: &Arc<Fleet>,
    pool: db::DbPool,
    settings: SessionSettings,
) -> Result<(SessionTree, Arc<dyn DesktopMedia>), AppError> {
    let first = fleet
        .first_pool()
        .await
        .step("cannot read the GPU hosts met before (launcher_hosts)")?;
    tracing::info!(
        hosts = fleet.views().len(),
        gpus = first.gpus.len(),
        "scheduling across discovered launchers"
    );
    let tree =
        SessionTree::start_with_out(pool.clone(), fleet.pool(), first.gpus, first.out, settings)
            .await?;
    fleet
        .attach(Arc::new(tree.clone()), Arc::new(PgSessionStore::new(pool)))
        .await;
    Ok((tree, Arc::new(fleet.desktops())))
}

#[async_trait::async_trait]
impl GpuPoolControl for SessionTree {
    fn add_gpus(&self, gpus: Vec<JoiningGpu>) {
        SessionTree::add_gpus(self, gpus);
    }

    fn set_host_out(&self, gpus: Vec<GpuAddr>, out: bool) {
        SessionTree::set_host_out(self, gpus, out);
    }

    fn set_health(&self, gpu: GpuAddr, unhealthy: Option<String>) {
        SessionTree::set_health(self, gpu, unhealthy);
    }

    async fn end_session(&self, session: SessionId) -> bool {
        self.stop(session, EndReason::AdminKilled).await
    }
}

/// This host's GPUs, when the gate is its own host 0: their indices and
/// their addresses.
async fn host_zero_gpus(config: &Config) -> Result<(Vec<u32>, Vec<GpuAddr>), AppError> {
    let indices: Vec<u32> = gpu::read_inventory(&config.launcher.gpus)
        .await?
        .iter()
        .map(|g| g.index)
        .collect();
    let gpus = indices
        .iter()
        .map(|&index| GpuAddr { host: 0, index })
        .collect();
    Ok((indices, gpus))
}

/// The tree on the simulated backend (host 0, fake GPUs): nothing starts, so
/// there are no desktops to serve and no GPU health to poll.
async fn simulated_tree(
    config: &Config,
    pool: db::DbPool,
    settings: SessionSettings,
) -> Result<(SessionTree, Arc<dyn DesktopMedia>), AppError> {
    let (_, gpus) = host_zero_gpus(config).await?;
    let launcher = Arc::new(SimulatedLauncher::new());
    let tree = SessionTree::start(pool, launcher, gpus, settings).await?;
    Ok((tree, Arc::new(NoDesktops)))
}

/// The tree on the local Docker Engine (host 0), with NVML health polling and
/// desktops served in this process (see [`crate::launcher::docker::DockerDesktops`]).
async fn local_docker_tree(
    config: &Config,
    pool: db::DbPool,
    settings: SessionSettings,
) -> Result<(SessionTree, Arc<dyn DesktopMedia>), AppError> {
    let (indices, gpus) = host_zero_gpus(config).await?;
    let launcher = Arc::new(docker_launcher(config).await?);
    let desktops: Arc<dyn DesktopMedia> =
        Arc::new(docker_desktops(config, launcher.clone(), Role::Serve)?);
    let tree = SessionTree::start(pool, launcher.clone(), gpus, settings).await?;
    // After recovery: warm desktops fill the GPUs it left free.
    launcher.keep_warm(indices.clone());
    let health_tree = tree.clone();
    gpu::spawn_health_feed(
        config.launcher.gpus.clone(),
        indices,
        GPU_HEALTH_INTERVAL,
        move |index, unhealthy| health_tree.set_health(GpuAddr { host: 0, index }, unhealthy),
    );
    Ok((tree, desktops))
}
