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
//!
//! Several namespaces can also share one segment ([`NetNs::lan`]): "hosts"
//! that reach each other directly (a browser and the GPU hosts whose WebRTC
//! peers it talks to), each still linked to the test's namespace by its own
//! pair.

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

/// Namespaces on one Ethernet segment: a bridge in a hub namespace and a
/// veth from it to each member ([`NetNs::lan`]). Packets between them never
/// pass through the test's own namespace, whose firewall may not forward
/// (Docker sets the FORWARD policy to DROP).
#[derive(Debug, Clone)]
pub struct Lan {
    /// The hub's address on the segment (its bridge).
    pub hub_ip: Ipv4Addr,
    /// Each member's address on the segment, in the order given.
    pub member_ips: Vec<Ipv4Addr>,
}

/// The segment's /24. Its addresses exist only inside the namespaces on it,
/// never in the test's own, so tests in parallel may all use it.
const LAN_PREFIX: [u8; 3] = [10, 214, 0];

impl NetNs {
    /// Puts this namespace (the hub) and `members` on one segment: a bridge
    /// `dglan` here with `10.214.0.1/24`, and a veth from it into each member
    /// (`dglan` there too) with `10.214.0.2`, `.3`, ... The hub's default
    /// route moves to the segment, so a browser here picks the segment's
    /// address as its own. Everything is removed with the namespaces.
    pub fn lan(&self, members: &[&NetNs]) -> Lan {
        assert!(members.len() < 250, "a /24 segment");
        let [a, b, c] = LAN_PREFIX;
        let hub_ip = Ipv4Addr::new(a, b, c, 1);
        let hub = self.name.as_str();
        ip_setup(&["-n", hub, "link", "add", "dglan", "type", "bridge"]);
        ip_setup(&[
            "-n",
            hub,
            "addr",
            "add",
            &format!("{hub_ip}/24"),
            "dev",
            "dglan",
        ]);
        ip_setup(&["-n", hub, "link", "set", "dglan", "up"]);
        let mut member_ips = Vec::new();
        for (i, member) in (0u8..).zip(members) {
            let port = format!("dglan{i}");
            let member_ip = Ipv4Addr::new(a, b, c, 2 + i);
            ip_setup(&[
                "-n",
                hub,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "dglan",
                "netns",
                &member.name,
            ]);
            ip_setup(&["-n", hub, "link", "set", &port, "master", "dglan"]);
            ip_setup(&["-n", hub, "link", "set", &port, "up"]);
            ip_setup(&[
                "-n",
                &member.name,
                "addr",
                "add",
                &format!("{member_ip}/24"),
                "dev",
                "dglan",
            ]);
            ip_setup(&["-n", &member.name, "link", "set", "dglan", "up"]);
            member_ips.push(member_ip);
        }
        ip_setup(&["-n", hub, "route", "replace", "default", "dev", "dglan"]);
        Lan { hub_ip, member_ips }
    }

    /// `ip netns exec NAME PROGRAM ARGS` as a command to configure and
    /// spawn: `ip` execs the program, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        command
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
