//! The real processes the campaign runs and breaks: a PostgreSQL cluster of
//! its own, an anvil node behind a proxy that can cut the gate's RPC, GPU
//! hosts that are each a network namespace with a Docker Engine and a
//! `deskgate launcher` inside, and the gate on loopback.
//!
//! Nothing here touches the services other tests share: the cluster, the
//! engines and the node are the campaign's own, so restarting them disturbs
//! nobody. Each host's engine runs in the host's namespace (entered with
//! `nsenter --net`, which keeps the machine's cgroup mounts that `ip netns
//! exec` would hide), with its own data root, exec root and socket, and the
//! test desktop image (TigerVNC's Xvnc) loaded from the shared engine. The gate reaches each
//! launcher over the namespace's veth pair, so taking that link down is a
//! partition between gate and host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::support::netns::NetNs;
use crate::support::{
    Deskgate, deskgate_command_in, free_port, repo_root, run_script, service_env,
};

/// Held by whoever writes to the campaign's chain (a deposit, a mined
/// block, a reorg), so that writes never overlap: anvil's `anvil_reorg`
/// racing its own automining leaves heights it answers `null` for below its
/// head (seen: 167 of 1,912 blocks), which no real chain does. A write is
/// over once its block is mined: anvil answers a transaction with its hash
/// and automines it afterwards (a hole at one height in 4,000 blocks was
/// seen while writers let go at the hash).
pub type ChainWrites = std::sync::Arc<tokio::sync::Mutex<()>>;

/// The launchers' shared secret (a test value).
pub const LAUNCHER_TOKEN: &str = "5e0c9a7b3f1d2e4c6a8b0d2f4e6c8a0b1d3f5e7c9a1b3d5f7e9c0a2b4d6f8e1a";

/// Whether `pid` is a process that has not exited (a zombie, exited but not
/// yet reaped, holds no socket any more).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// The running processes called `name` whose command line mentions `needle`.
fn processes_named(name: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            comm.trim() == name && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .filter(|&pid| is_running(pid))
        .collect()
}

/// Polls `ready` every 50 ms until it holds or `within` passes.
pub async fn poll_until(within: Duration, mut ready: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A PostgreSQL cluster of the campaign's own (`scripts/postgres.sh`).
pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    /// `postgres://deskgate:...@127.0.0.1:<port>/deskgate`.
    pub url: String,
}

impl Postgres {
    /// Creates and starts a cluster on a free port.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("deskgate-chaos-pg-")
            .tempdir_in(repo_root().join("target"))
            .expect("a directory for the cluster");
        let data = dir.path().join("data");
        let port = free_port();
        let pg = Self {
            url: format!("postgres://deskgate:deskgate-dev-only@127.0.0.1:{port}/deskgate"),
            _dir: dir,
            data,
            port,
        };
        pg.start_again();
        pg
    }

    fn script() -> PathBuf {
        PathBuf::from(service_env("DESKGATE_TEST_PG_SCRIPT"))
    }

    /// Stops the server with pg_ctl's `mode`: `fast` (clients are told) or
    /// `immediate` (a crash; the next start recovers from the WAL).
    pub fn stop(&self, mode: &str) {
        run_script(&Self::script(), &["stop", path_str(&self.data), mode]);
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&self) {
        run_script(
            &Self::script(),
            &["start", path_str(&self.data), &self.port.to_string()],
        );
    }

    /// Kills every connection to the database but the caller's; returns how
    /// many there were.
    pub async fn kill_connections(&self) -> usize {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Killed {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let Ok(mut conn) = AsyncPgConnection::establish(&self.url).await else {
            return 0;
        };
        diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = 'deskgate' AND pid <> pg_backend_pid()",
        )
        .get_result::<Killed>(&mut conn)
        .await
        .map_or(0, |k| k.n as usize)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", path_str(&self.data), "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A TCP proxy between the gate and anvil that can cut the gate off its RPC
/// node: while down it closes every open connection and every new one.
pub struct RpcProxy {
    /// `http://127.0.0.1:<port>`: the gate's `DESKGATE_RPC_URL`.
    pub url: String,
    up: watch::Sender<bool>,
}

impl RpcProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the RPC proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, _) = watch::channel(true);
        let watch_up = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut up_now = watch_up.subscribe();
                if !*up_now.borrow() {
                    continue; // dropped: the connection is closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut node) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut node) => {}
                        _ = up_now.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { url, up }
    }

    /// Cuts (`false`) or restores (`true`) the gate's RPC.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// One GPU host: a namespace with its Docker Engine and its launcher.
pub struct Host {
    /// The host number the gate knows it by.
    pub number: u16,
    /// Its namespace (the veth's host end is the gate's way in).
    pub netns: NetNs,
    dir: tempfile::TempDir,
    dockerd: Option<Child>,
    launcher: Option<Deskgate>,
    /// What launchers killed earlier printed.
    earlier_output: String,
    env: Vec<(&'static str, String)>,
    /// `http://<namespace address>:<port>/`.
    pub url: url::Url,
}

impl Host {
    /// Makes the namespace, starts its engine with the desktop `image`
    /// loaded from the shared engine, and starts a launcher with `gpus` fake
    /// GPUs on it.
    pub async fn start(number: u16, gpus: u32, image: &str) -> Self {
        let netns = NetNs::create();
        let dir = tempfile::Builder::new()
            .prefix("deskgate-chaos-host-")
            .tempdir()
            .expect("a directory for the host's engine");
        let port = free_port();
        let addr = std::net::SocketAddr::from((netns.ns_ip, port));
        let url = url::Url::parse(&format!("http://{addr}/")).unwrap();
        let env = vec![
            ("DESKGATE_LAUNCHER_BIND", addr.to_string()),
            // The namespace's address is the host's "public" one.
            ("DESKGATE_ALLOW_PUBLIC_BIND", "true".to_string()),
            ("DESKGATE_LAUNCHER_TOKEN", LAUNCHER_TOKEN.to_string()),
            ("DESKGATE_LAUNCHER_HOST", number.to_string()),
            ("DESKGATE_GPUS", format!("fake:{gpus}")),
            ("DESKGATE_SESSION_IMAGE", image.to_string()),
            ("DESKGATE_SESSION_MEMORY_MIB", "256".to_string()),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0".to_string()),
        ];
        let mut host = Self {
            number,
            netns,
            dir,
            dockerd: None,
            launcher: None,
            earlier_output: String::new(),
            env,
            url,
        };
        host.start_engine().await;
        host.load_image(image);
        host.start_launcher().await;
        host
    }

    /// `unix://<dir>/docker.sock`: this host's engine.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// The `docker` CLI on this host's engine.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .args(["-H", &self.docker_host()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("docker CLI: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    async fn engine_answers(&self) -> bool {
        self.docker(&["version", "--format", "{{.Server.Version}}"])
            .is_ok()
    }

    /// Starts this host's dockerd and waits until it answers.
    pub async fn start_engine(&mut self) {
        assert!(self.dockerd.is_none(), "the engine is running");
        let root = self.dir.path();
        let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns.name))
            .arg("dockerd")
            .arg(format!("--data-root={}", root.join("data").display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("dockerd.pid").display()))
            .arg(format!("--host={}", self.docker_host()))
            .args(["--bridge=none", "--log-level=warn"])
            .arg(format!("--cgroup-parent=deskgate-chaos-{}", self.number))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd (nsenter and dockerd: `make services` installs docker.io)");
        self.dockerd = Some(child);
        let up = poll_until(Duration::from_secs(60), async || {
            self.engine_answers().await
        })
        .await;
        assert!(
            up,
            "host {}'s dockerd did not answer within 60 s:\n{}",
            self.number,
            self.engine_log()
        );
    }

    /// The tail of this host's dockerd log.
    pub fn engine_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops this host's dockerd (SIGTERM: it stops its containers) and
    /// waits for it to exit.
    pub fn stop_engine(&mut self) {
        let Some(mut child) = self.dockerd.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.stop_managed_containerd();
    }

    /// dockerd runs a containerd of its own and, on start, reuses one that
    /// still looks alive. A containerd outliving its dockerd (the SIGKILL
    /// above, or one slow to follow the SIGTERM) made the next start wait on a
    /// socket nobody served until the engine gave up ("containerd socket
    /// timeout", seen once in 900 restarts on a loaded machine). So a stop is
    /// only over once that containerd is gone too: SIGTERM, 10 s, SIGKILL.
    /// It is found by its command line, which names this host's exec root.
    fn stop_managed_containerd(&self) {
        let exec_root = self.dir.path().join("exec");
        let exec_root = exec_root.to_string_lossy();
        let pids = processes_named("containerd", &exec_root);
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = || {
            pids.iter()
                .copied()
                .filter(|&pid| is_running(pid))
                .collect::<Vec<_>>()
        };
        while !alive().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in alive() {
            eprintln!(
                "chaos: host {}'s containerd (pid {pid}) outlived its dockerd by 10 s: SIGKILL",
                self.number
            );
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    fn load_image(&self, image: &str) {
        let saved = Command::new("docker")
            .args(["save", image])
            .output()
            .expect("docker save");
        assert!(saved.status.success(), "docker save {image}");
        let mut load = Command::new("docker")
            .args(["-H", &self.docker_host(), "load", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("docker load");
        use std::io::Write;
        load.stdin
            .take()
            .unwrap()
            .write_all(&saved.stdout)
            .expect("feed docker load");
        assert!(
            load.wait().unwrap().success(),
            "docker load into host {}",
            self.number
        );
    }

    /// Starts the launcher and waits until it answers from the gate's side.
    pub async fn start_launcher(&mut self) {
        assert!(self.launcher.is_none(), "the launcher is running");
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut command = deskgate_command_in(&self.netns, &["launcher"], &env);
        command.env("DOCKER_HOST", self.docker_host());
        let mut process = Deskgate::spawn_command(command);
        process
            .wait_ready(
                &reqwest::Client::new(),
                self.url.join("healthz").unwrap().as_str(),
            )
            .await;
        self.launcher = Some(process);
    }

    /// SIGKILLs the launcher (its containers keep running).
    pub fn kill_launcher(&mut self) {
        if let Some(launcher) = self.launcher.take() {
            self.earlier_output.push_str(&launcher.output());
            self.earlier_output
                .push_str("--- killed with SIGKILL ---\n");
            launcher.kill_hard();
        }
    }

    /// Whether the launcher answers `/healthz` from the gate's side.
    pub async fn launcher_answers(&self, http: &reqwest::Client) -> bool {
        let url = self.url.join("healthz").unwrap();
        matches!(http.get(url).send().await, Ok(r) if r.status() == 200)
    }

    /// Everything this host's launchers printed, across restarts.
    pub fn launcher_output(&self) -> String {
        let current = self.launcher.as_ref().map(Deskgate::output);
        format!("{}{}", self.earlier_output, current.unwrap_or_default())
    }

    /// `(id, session label)` of every container on this host's engine that
    /// carries the session label; `None` when the engine does not answer.
    pub fn session_containers(&self) -> Option<Vec<(String, String)>> {
        self.labelled(&["ps", "-a"])
    }

    /// The sessions whose containers run on this host now.
    pub fn running_sessions(&self) -> Vec<String> {
        self.docker(&[
            "ps",
            "--filter",
            "label=deskgate.session",
            "--filter",
            "status=running",
            "--format",
            "{{.Label \"deskgate.session\"}}",
        ])
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
    }

    /// The same for networks.
    pub fn session_networks(&self) -> Option<Vec<(String, String)>> {
        self.labelled(&["network", "ls"])
    }

    fn labelled(&self, list: &[&str]) -> Option<Vec<(String, String)>> {
        let mut args = list.to_vec();
        args.extend_from_slice(&[
            "--filter",
            "label=deskgate.session",
            "--format",
            "{{.ID}} {{.Label \"deskgate.session\"}}",
        ]);
        let out = self.docker(&args).ok()?;
        Some(
            out.lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(id, session)| (id.to_string(), session.to_string()))
                .collect(),
        )
    }

    /// Removes whatever the campaign left on this engine, then stops it.
    pub fn tear_down(&mut self) {
        self.kill_launcher();
        if self.dockerd.is_some() {
            if let Some(containers) = self.session_containers() {
                for (id, _) in containers {
                    let _ = self.docker(&["rm", "-f", &id]);
                }
            }
            if let Some(networks) = self.session_networks() {
                for (id, _) in networks {
                    let _ = self.docker(&["network", "rm", &id]);
                }
            }
        }
        self.stop_engine();
        // The engine's overlay mounts are gone with it; anything left is
        // unmounted so that the directory can be removed.
        let data = self.dir.path().join("data");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                data.display()
            ))
            .status();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.tear_down();
    }
}
