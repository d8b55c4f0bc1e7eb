//! What the benchmarks share.

/// A service setting such as `DESKGATE_DATABASE_URL`: from the environment
/// (`make bench` sets it), else from `.deskgate/services.env`; otherwise the
/// benchmark stops and names the command that starts the services.
pub fn service_setting(name: &str) -> String {
    if let Ok(value) = std::env::var(name) {
        return value;
    }
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/.deskgate/services.env");
    let prefix = format!("{name}=");
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_string))
        })
        .unwrap_or_else(|| panic!("{name} is not set: run `make bench` (it starts the services)"))
}
