//! The `deskgate` command line: the binary edge. It parses the arguments,
//! loads the configuration, hands it to [`deskgate::app`] and turns the
//! outcome into an exit code and a message: 0 done, 1 failed, 2 refused
//! (the configuration has problems, or a required setting is missing).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use deskgate::app::{self, commands};
use deskgate::config::{self, Loaded, Role};
use deskgate::platform::telemetry;

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
    /// Ask this host's running gate (or launcher) for /healthz; exit 0 when
    /// it answers 200 (a container HEALTHCHECK that needs no curl).
    Healthcheck {
        /// Which program to ask.
        #[arg(long = "for", value_enum, default_value = "serve")]
        role: Role,
    },
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
    let load = |role| config::load(cli.config.as_deref(), std::env::vars(), role);
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { role },
        } => {
            let loaded = load(role);
            print!("{}", commands::config_report(&loaded, role));
            ExitCode::from(u8::from(!loaded.problems.is_empty()))
        }
        Command::Gpus => gpus(load(Role::Serve)),
        Command::Healthcheck { role } => {
            let loaded = load(role);
            match loaded.config {
                Some(config) => printed(commands::healthcheck(&config, role)),
                None => refuse(&loaded.problems),
            }
        }
        Command::Migrate => migrate(load(Role::Serve)),
        Command::Serve => run(load(Role::Serve), Role::Serve),
        Command::Launcher => run(load(Role::Launcher), Role::Launcher),
    }
}

fn gpus(loaded: Loaded) -> ExitCode {
    let Some(config) = loaded.config else {
        return refuse(&loaded.problems);
    };
    printed(commands::gpu_table(&config.launcher.gpus))
}

fn migrate(loaded: Loaded) -> ExitCode {
    let Some(url) = loaded.config.and_then(|c| c.database.url) else {
        eprintln!(
            "deskgate: DESKGATE_DATABASE_URL is not set: point it at PostgreSQL (postgres://user:password@host:5432/deskgate)"
        );
        return ExitCode::from(2);
    };
    printed(commands::migrate(&url))
}

/// Prints a command's report, or its error as a failure.
fn printed<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
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

fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("deskgate: {err}");
    ExitCode::FAILURE
}

/// Runs `serve` or `launcher` on a fresh runtime until it stops.
fn run(loaded: Loaded, role: Role) -> ExitCode {
    let (config, warnings) = match loaded.into_result() {
        Ok(ok) => ok,
        Err(problems) => return refuse(&problems),
    };
    telemetry::init_logging(config.server.log_format);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    let result = runtime.block_on(async {
        match role {
            Role::Serve => app::gate::serve(config).await,
            Role::Launcher => app::launcher::serve(config).await,
        }
    });
    // Do not wait for stray blocking tasks: shutdown must stay prompt.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result.map_err(anyhow::Error::from) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{err:#}");
            fail(&format_args!("{err:#}"))
        }
    }
}
