//! A network namespace with a veth pair to the host, for a browser under
//! test that must do WebRTC.
//!
//! Chromium gathers no ICE candidates on a host that has only loopback, and
//! a peer on the test host is reachable over loopback only. So the browser
//! runs in a namespace of its own whose one interface is a veth pair: the
//! namespace side (`ns_ip`) is Chromium's host candidate and the host side
//! (`host_ip`, in the test's namespace) is where the gate's WebRTC sockets
//! bind. Only the browser enters it ([`NetNs::chromium_wrapper`]); the test
//! and the browser's driver stay on the host and reach the gate on loopback.
//!
//! Each namespace is `deskgate-<pid>-<n>` with a /30 of 10.213.0.0/16 and
//! interfaces `dgw<n>h` (host) and `dgw<n>n` (namespace). Making one needs
//! root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's `ip`, as CI has; a
//! missing one fails the test with what to install, never a skip. Dropping it
//! kills what still runs inside and removes both; a namespace whose test
//! process died is removed (likewise) by the next one made.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// /30 networks in 10.213.0.0/16.
const NETWORKS: u32 = 1 << 14;

/// A network namespace linked to the host by a veth pair; removed on drop.
pub struct NetNs {
    /// The namespace's name (`ip netns exec <name> ...`).
    pub name: String,
    /// The veth end that stays on the host.
    pub host_if: String,
    /// The host end's address: what a server for the namespace binds.
    pub host_ip: Ipv4Addr,
    /// The address of the namespace's end.
    pub ns_ip: Ipv4Addr,
    dir: tempfile::TempDir,
}

/// Runs `ip ARGS`; the failure message names what is missing.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run `ip` ({e}): the WebRTC tests need iproute2 (apt-get install iproute2)"
            )
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What making a namespace needs, for failure messages.
const NEEDS: &str = "The WebRTC tests put Chromium in a network namespace with a veth pair: \
    they must run as root (CAP_NET_ADMIN and CAP_SYS_ADMIN, as in CI) with iproute2 installed; \
    `make services` provides the rest.";

/// Runs `ip ARGS` for setting up a namespace; panics with what the test needs.
fn ip_setup(args: &[&str]) {
    if let Err(message) = ip(args) {
        panic!("{message}\n{NEEDS}");
    }
}

/// Fails at once, naming what is missing, without root or without `ip`.
fn preflight() {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
        });
    if euid.as_deref() != Some("0") {
        panic!(
            "this test runs as uid {}, not root.\n{NEEDS}",
            euid.as_deref().unwrap_or("unknown")
        );
    }
    if let Err(message) = ip(&["-V"]) {
        panic!("{message}\n{NEEDS}");
    }
}

/// Exclusive use of the choice of names and networks, across test processes.
struct AllocationLock(#[allow(dead_code)] std::fs::File);

impl AllocationLock {
    fn acquire() -> Self {
        Self(super::lock_file("deskgate-tests-netns.lock"))
    }
}

/// The namespaces `ip netns list` shows.
fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Removes `deskgate-<pid>-<n>` namespaces (and their veth pairs) whose
/// process is gone.
fn remove_leftovers() {
    for name in namespaces() {
        let Some((pid, index)) = name
            .strip_prefix("deskgate-")
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_inside(&name);
        let _ = ip(&["link", "del", &format!("dgw{index}h")]);
        let _ = ip(&["netns", "del", &name]);
    }
}

/// Kills the processes in namespace `name` (a browser a test started there).
fn kill_inside(name: &str) {
    let pids = ip(&["netns", "pids", name]).unwrap_or_default();
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).output();
    }
}

/// Network `index`'s host and namespace addresses.
fn addresses(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + index * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

impl NetNs {
    /// Makes a namespace with loopback up and a veth pair on a /30 of its
    /// own (a default route through the host end, so Chromium has a
    /// "default" interface), with the host end up in the host namespace.
    pub fn create() -> Self {
        preflight();
        let dir = tempfile::Builder::new()
            .prefix("deskgate-netns-")
            .tempdir()
            .expect("a temporary directory");
        let _lock = AllocationLock::acquire();
        remove_leftovers();
        let links = ip(&["-o", "link", "show"]).unwrap_or_else(|m| panic!("{m}"));
        let addrs = ip(&["-4", "-o", "addr", "show"]).unwrap_or_else(|m| panic!("{m}"));
        let in_use = |index: u32| {
            let (host, ns) = addresses(index);
            links.contains(&format!(": dgw{index}h"))
                || addrs.contains(&format!(" {host}/"))
                || addrs.contains(&format!(" {ns}/"))
        };
        let start = std::process::id().wrapping_mul(97) % NETWORKS;
        let index = (0..NETWORKS)
            .map(|i| (start + i) % NETWORKS)
            .find(|&i| !in_use(i))
            .expect("a free /30 in 10.213.0.0/16");
        let name = format!("deskgate-{}-{index}", std::process::id());
        let host_if = format!("dgw{index}h");
        let ns_if = format!("dgw{index}n");
        let (host_ip, ns_ip) = addresses(index);
        let netns = Self {
            name,
            host_if,
            host_ip,
            ns_ip,
            dir,
        };
        // From here on, a failure drops `netns`, which removes what was made.
        let (name, host_if) = (netns.name.as_str(), netns.host_if.as_str());
        let (host_cidr, ns_cidr) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
        ip_setup(&["netns", "add", name]);
        ip_setup(&[
            "link", "add", host_if, "type", "veth", "peer", "name", &ns_if, "netns", name,
        ]);
        ip_setup(&["addr", "add", &host_cidr, "dev", host_if]);
        ip_setup(&["link", "set", host_if, "up"]);
        ip_setup(&["-n", name, "link", "set", "lo", "up"]);
        ip_setup(&["-n", name, "addr", "add", &ns_cidr, "dev", &ns_if]);
        ip_setup(&["-n", name, "link", "set", &ns_if, "up"]);
        ip_setup(&[
            "-n",
            name,
            "route",
            "add",
            "default",
            "via",
            &host_ip.to_string(),
        ]);
        netns
    }

    /// An executable script that runs `chromium` (with its arguments) inside
    /// the namespace: playwright's `executablePath`. Playwright talks to the
    /// browser over inherited pipes, so its driver stays on the host.
    pub fn chromium_wrapper(&self, chromium: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let quoted = format!("'{}'", chromium.replace('\'', r"'\''"));
        let path = self.dir.path().join("chromium-in-netns");
        let script = format!(
            "#!/bin/sh\n# Chromium in the test's network namespace {name}.\nexec ip netns exec {name} {quoted} \"$@\"\n",
            name = self.name
        );
        std::fs::write(&path, script).expect("write the chromium wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the chromium wrapper executable");
        path
    }

    /// Cuts the namespace off the host (its veth's host end goes down), as
    /// a dropped network would: packets are lost, nothing is reset.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap_or_else(|m| panic!("{m}"));
    }

    /// Undoes [`NetNs::cut`]: the link comes back up with its routes.
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap_or_else(|m| panic!("{m}"));
        ip(&[
            "-n",
            &self.name,
            "route",
            "replace",
            "default",
            "via",
            &self.host_ip.to_string(),
        ])
        .unwrap_or_else(|m| panic!("{m}"));
    }

    /// Runs `program ARGS` inside the namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run `ip netns exec`")
    }

    /// Whether the namespace is still listed.
    pub fn exists(name: &str) -> bool {
        namespaces().iter().any(|n| n == name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // What the test started in here (a browser whose driver was killed
        // with the test) goes first; then the pair, then the namespace.
        kill_inside(&self.name);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Forwards every connection to `listen` (an address on a namespace's veth)
/// to `port` on 127.0.0.1, where a gate under test listens: the browser in
/// the namespace reaches the gate at its public URL. Runs until the test's
/// runtime ends.
pub async fn forward_to_loopback(listen: std::net::SocketAddr, port: u16) {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("bind the forwarder on {listen}: {e}"));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut gate) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut gate).await;
                }
            });
        }
    });
}
