//! The short commands: `deskgate migrate`, `deskgate gpus` and
//! `deskgate config check`. Each returns what to print; `main.rs` prints it
//! and picks the exit code.

use crate::config::{GpuSelection, Loaded, Role};
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
