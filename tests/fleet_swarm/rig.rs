//! The Swarm the fleet test deploys to: real Docker Engines (the machine's
//! dockerd binary, 20.10), each in a network namespace of its own on one
//! bridge, made and removed by `scripts/fleet-rig.sh`; this file drives them
//! with the `docker` CLI, one engine at a time (`-H`).
//!
//! Node 0 is the manager (labelled `deskgate.db=true`: PostgreSQL's volume),
//! nodes 1.. are GPU workers (`deskgate.gpu=true`: one launcher each, fake
//! GPUs). Each engine has its own hostname (`fleet-manager`, `fleet-gpuN`),
//! so Swarm's node list reads like a real fleet, and its own socket, which
//! the stack's launcher mounts through `DESKGATE_DOCKER_SOCKET` =
//! `<rig>/sockets/{{.Node.Hostname}}/docker.sock` (on a real host it is
//! `/var/run/docker.sock`; here every engine shares one filesystem).
//!
//! Invariants: one rig at a time on a machine (a lock file, held until the
//! rig is dropped); everything it makes is removed when it is dropped,
//! however the test ends (`docker stack rm`, then `fleet-rig.sh down`: swarm
//! leave, engines stopped, namespaces, bridge, iptables rule and data
//! removed); the test's traffic goes only to the rig's namespaces and
//! loopback. A missing prerequisite fails with the command that provides it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{lock_file, repo_root, service_env};

/// The stack's name (`docker stack deploy ... deskgate`).
pub const STACK: &str = "deskgate";
/// The rig's /24; the bridge holds `.1`, node N `.(10+N)`.
pub const PREFIX: &str = "10.215.0";
/// Where the rig keeps its engines (the script's default).
const DIR: &str = "/tmp/deskgate-fleet";
/// What the manager runs, and what the GPU workers run.
pub const MANAGER_IMAGES: [&str; 3] = [
    "deskgate/deskgate:local",
    "deskgate/postgres:15-local",
    "deskgate/turn:local",
];
/// The small test desktop (`scripts/desktop.sh`), which the launchers start.
pub const DESKTOP_IMAGE: &str = "deskgate/desktop:local";

/// Copies what node `number` runs from the machine's engine into its own:
/// the gate's, PostgreSQL's and coturn's images on the manager, the
/// launcher's and the desktop's on a worker.
fn load_images(number: usize) {
    let n = number.to_string();
    let mut args = vec!["load", n.as_str()];
    if number == 0 {
        args.extend_from_slice(&MANAGER_IMAGES);
    } else {
        args.extend_from_slice(&["deskgate/deskgate:local", DESKTOP_IMAGE]);
    }
    rig_script(&args);
}

/// One engine of the Swarm.
#[derive(Debug, Clone)]
pub struct Node {
    /// 0 = the manager.
    pub number: usize,
    /// Its hostname, as `docker node ls` shows it.
    pub hostname: String,
    /// Its Swarm node ID: the launcher's `DESKGATE_LAUNCHER_NAME` there.
    pub id: String,
    /// `unix://.../docker.sock`.
    pub docker_host: String,
}

/// The rig: engines, Swarm and the dev chain; torn down on drop.
pub struct Rig {
    /// The engines that joined, manager first.
    pub nodes: Vec<Node>,
    stack_deployed: bool,
    _lock: std::fs::File,
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn script() -> PathBuf {
    repo_root().join("scripts/fleet-rig.sh")
}

/// Runs `scripts/fleet-rig.sh ARGS`; panics with its output if it fails.
fn rig_script(args: &[&str]) {
    let out = Command::new(script())
        .args(args)
        .env("DESKGATE_FLEET_DIR", DIR)
        .env("DESKGATE_ANVIL_BIN", service_env("DESKGATE_ANVIL_BIN"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/fleet-rig.sh");
    assert!(
        out.status.success(),
        "scripts/fleet-rig.sh {args:?} failed:\n{}",
        text(&out)
    );
}

/// `docker -H HOST ARGS`: stdout, or the error output.
pub fn docker_on(host: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(["-H", host])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("docker CLI: {e} (make services installs docker.io)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(text(&out))
    }
}

/// Fails at once, with the fix, when the test cannot run here.
pub fn preflight() {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
        });
    assert_eq!(
        euid.as_deref(),
        Some("0"),
        "the fleet test runs Docker Engines in network namespaces: run it as root (as `make fleet-test` and CI do)"
    );
    for tool in ["ip", "iptables", "nsenter", "unshare", "dockerd", "docker"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: run `make services` (docker.io) and apt-get install iproute2 iptables util-linux"
        );
    }
    let host = service_env("DOCKER_HOST");
    for image in MANAGER_IMAGES {
        assert!(
            docker_on(&host, &["image", "inspect", image]).is_ok(),
            "the image {image} is missing: run `scripts/compose-stack.sh build` (or `make compose-images`)"
        );
    }
    assert!(
        docker_on(&host, &["image", "inspect", DESKTOP_IMAGE]).is_ok(),
        "the image {DESKTOP_IMAGE} is missing: run `make services` (scripts/desktop.sh builds it)"
    );
    let anvil = service_env("DESKGATE_ANVIL_BIN");
    assert!(
        Path::new(&anvil).exists(),
        "anvil is missing at {anvil}: run `make services`"
    );
}

impl Rig {
    /// Removes what an earlier run left; starts the manager's engine and
    /// `workers` GPU workers' (their images loaded side by side), makes node
    /// 0 a Swarm manager labelled for the database, joins the workers as GPU
    /// hosts, and starts the dev chain in the manager's namespace.
    pub fn start(workers: usize) -> Self {
        let lock = lock_file("deskgate-tests-fleet.lock");
        rig_script(&["down"]);
        let mut rig = Self {
            nodes: Vec::new(),
            stack_deployed: false,
            _lock: lock,
        };
        rig.start_engine(0, "fleet-manager");
        for number in 1..=workers {
            rig.start_engine(number, &format!("fleet-gpu{number}"));
        }
        std::thread::scope(|scope| {
            for node in &rig.nodes {
                scope.spawn(|| load_images(node.number));
            }
        });
        let ip = format!("{PREFIX}.10");
        rig.docker(
            0,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                &ip,
                "--listen-addr",
                &format!("{ip}:2377"),
            ],
        );
        rig.nodes[0].id = rig.docker(0, &["info", "--format", "{{.Swarm.NodeID}}"]);
        rig.manager(&[
            "node",
            "update",
            "--label-add",
            "deskgate.db=true",
            &rig.nodes[0].id.clone(),
        ]);
        for number in 1..=workers {
            rig.join_as_gpu_host(number);
        }
        rig_script(&["anvil"]);
        // Client addresses of the test on the bridge (.2-.9): each wallet signs
        // in from its own, as users do, so the gate's per-client sign-in
        // limit is not what a test of the fleet measures.
        for i in 2..10 {
            let _ = Command::new("ip")
                .args([
                    "addr",
                    "add",
                    &format!("{PREFIX}.{i}/32"),
                    "dev",
                    "dgfleet0",
                ])
                .status();
        }
        rig
    }

    /// Starts engine `number` called `hostname` (images not loaded yet).
    fn start_engine(&mut self, number: usize, hostname: &str) {
        rig_script(&["engine", &number.to_string(), hostname]);
        self.nodes.push(Node {
            number,
            hostname: hostname.to_string(),
            id: String::new(),
            docker_host: format!("unix://{DIR}/node-{number}/docker.sock"),
        });
    }

    /// Starts GPU worker `number` with its images, joins it to the Swarm and
    /// labels it a GPU host: a host added to a running fleet.
    pub fn add_gpu_worker(&mut self, number: usize) -> Node {
        self.start_engine(number, &format!("fleet-gpu{number}"));
        load_images(number);
        self.join_as_gpu_host(number)
    }

    /// Joins engine `number` to the Swarm as a worker labelled `deskgate.gpu=true`.
    fn join_as_gpu_host(&mut self, number: usize) -> Node {
        let token = self.manager(&["swarm", "join-token", "-q", "worker"]);
        let ip = format!("{PREFIX}.{}", 10 + number);
        self.docker(
            number,
            &[
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &ip,
                "--listen-addr",
                &format!("{ip}:2377"),
                &format!("{PREFIX}.10:2377"),
            ],
        );
        let id = self.docker(number, &["info", "--format", "{{.Swarm.NodeID}}"]);
        self.manager(&["node", "update", "--label-add", "deskgate.gpu=true", &id]);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.number == number)
            .expect("the engine was started");
        node.id = id;
        node.clone()
    }

    /// The node numbered `number`.
    pub fn node(&self, number: usize) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.number == number)
            .unwrap_or_else(|| panic!("no node {number}"))
    }

    /// `docker ARGS` on engine `number`; panics with the error.
    pub fn docker(&self, number: usize, args: &[&str]) -> String {
        let host = format!("unix://{DIR}/node-{number}/docker.sock");
        docker_on(&host, args).unwrap_or_else(|e| panic!("docker {args:?} on node {number}: {e}"))
    }

    /// `docker ARGS` on the manager.
    pub fn manager(&self, args: &[&str]) -> String {
        self.docker(0, args)
    }

    /// Creates the external secret `name` with `value` (from stdin: never on
    /// a command line).
    pub fn create_secret(&self, name: &str, value: &str) {
        use std::io::Write;
        let mut child = Command::new("docker")
            .args([
                "-H",
                &self.node(0).docker_host,
                "secret",
                "create",
                name,
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker secret create");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker secret create {name}: {}",
            text(&out)
        );
    }

    /// `docker stack deploy -c FILE deskgate` with `vars` as the only
    /// `DESKGATE_*` variables the file sees (the test services' own, which
    /// `make test` exports, are not the stack's).
    pub fn deploy(&mut self, file: &Path, vars: &[(&str, String)]) {
        let mut command = Command::new("docker");
        for (key, _) in std::env::vars() {
            if key.starts_with("DESKGATE_") || key.starts_with("POSTGRES_") {
                command.env_remove(key);
            }
        }
        let out = command
            .args(["-H", &self.node(0).docker_host, "stack", "deploy"])
            .args(["--resolve-image", "never", "-c"])
            .arg(file)
            .arg(STACK)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("docker stack deploy");
        self.stack_deployed = true;
        assert!(out.status.success(), "docker stack deploy: {}", text(&out));
    }

    /// The running tasks of `service` (without the stack prefix): the
    /// hostname of the node each runs on.
    pub fn running_tasks(&self, service: &str) -> Vec<String> {
        let out = self.manager(&[
            "service",
            "ps",
            &format!("{STACK}_{service}"),
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ]);
        out.lines()
            .filter(|l| l.contains(" Running "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// The last lines every service logged, and every task's state, for
    /// failure reports.
    pub fn logs(&self) -> String {
        let mut report = docker_on(
            &self.node(0).docker_host,
            &[
                "stack",
                "ps",
                STACK,
                "--no-trunc",
                "--format",
                "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
            ],
        )
        .unwrap_or_else(|e| e);
        for service in ["gate", "launcher", "postgres", "turn"] {
            let logs = docker_on(
                &self.node(0).docker_host,
                &[
                    "service",
                    "logs",
                    "--raw",
                    "--tail",
                    "25",
                    &format!("{STACK}_{service}"),
                ],
            )
            .unwrap_or_else(|e| e);
            report.push_str(&format!("\n--- {service} ---\n{logs}"));
        }
        report
    }

    /// The ID of the running container of `service` on node `number`.
    pub fn container_of(&self, number: usize, service: &str) -> Option<String> {
        let ids = self.docker(
            number,
            &[
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={STACK}_{service}"),
            ],
        );
        ids.lines().next().map(str::to_string)
    }

    /// Session containers running on node `number`: `(container id, session id)`.
    pub fn session_containers(&self, number: usize) -> Vec<(String, String)> {
        self.docker(
            number,
            &[
                "ps",
                "--filter",
                "label=deskgate.session",
                "--format",
                "{{.ID}} {{.Label \"deskgate.session\"}}",
            ],
        )
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(c, s)| (c.to_string(), s.to_string()))
        .collect()
    }

    /// Waits until `ready` holds, checking every 500 ms; false after `within`.
    pub fn wait(&self, within: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if ready() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.stack_deployed {
            let _ = docker_on(&self.node(0).docker_host, &["stack", "rm", STACK]);
            // The tasks stop before their networks can go; the engines stop
            // whatever is left anyway.
            std::thread::sleep(Duration::from_secs(3));
        }
        // Session desktops are not Swarm's: removed with their engines' data.
        let out = Command::new(script())
            .arg("down")
            .env("DESKGATE_FLEET_DIR", DIR)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("fleet rig teardown: {}", text(&o)),
            Err(e) => eprintln!("fleet rig teardown: {e}"),
        }
    }
}
