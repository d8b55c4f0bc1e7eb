//! The browser suites' harness: a gate running the desktop image whose
//! public URL is the host end of a test-made network namespace
//! ([`PageStage`]), and a node driver of its page in Chromium inside that
//! namespace ([`PageDriver`]), which reports stages as JSON lines and waits
//! for the test's word on stdin where the test must check something.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::api::Stage;
use super::desktop::desktop_stage;
use super::netns::{NetNs, forward_to_loopback};
use super::{free_port, repo_root, service_env};

/// Where the drivers put their screenshots.
pub fn shots_dir() -> PathBuf {
    repo_root().join("target/web-client-shots")
}

/// A gate for a browser in a namespace of its own: the gate listens on
/// loopback, a forwarder on the namespace's host end is its public URL, and
/// its WebRTC sockets bind that address too.
pub struct PageStage {
    /// The browser's namespace (dropped last: it outlives the gate).
    pub netns: NetNs,
    /// The gate and its services.
    pub stage: Stage,
    /// `http://<host end>:<port>`: the URL the browser opens.
    pub public_url: String,
}

impl PageStage {
    /// Starts a [`desktop_stage`] named `tag` with `settings` on top.
    pub async fn start(tag: &str, settings: &[(&'static str, &str)]) -> Self {
        Self::start_in(NetNs::create(), tag, settings).await
    }

    /// [`PageStage::start`] for a browser in `netns`, a namespace the test
    /// made (and maybe linked to others) beforehand.
    pub async fn start_in(netns: NetNs, tag: &str, settings: &[(&'static str, &str)]) -> Self {
        let host_ip = netns.host_ip.to_string();
        let public = SocketAddr::new(netns.host_ip.into(), free_port());
        let public_url = format!("http://{public}");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut all: Vec<(&'static str, &str)> = vec![
            ("DESKGATE_WEBRTC_UDP_IP", &host_ip),
            ("DESKGATE_PUBLIC_URL", &public_url),
        ];
        all.extend_from_slice(settings);
        let stage = desktop_stage(tag, &metrics_addr, &all).await;
        forward_to_loopback(public, stage.gate.port).await;
        Self {
            netns,
            stage,
            public_url,
        }
    }
}

/// A running `tests/browser/<script>` driving the page.
pub struct PageDriver {
    child: Child,
    to_driver: ChildStdin,
    stages: Lines<BufReader<ChildStdout>>,
    log: tokio::task::JoinHandle<String>,
    /// The stages reported so far, in order.
    pub reached: Vec<String>,
    /// Where its screenshots go.
    shots: PathBuf,
}

impl PageDriver {
    /// Runs `script` against `page` with its public URL, its anvil node,
    /// the screenshot directory and `extra` as arguments, Chromium in the
    /// page's namespace.
    pub fn spawn(script: &str, page: &PageStage, extra: &[&str]) -> Self {
        Self::spawn_with_shots(script, page, &shots_dir(), extra)
    }

    /// [`PageDriver::spawn`] with its screenshots in `shots`.
    pub fn spawn_with_shots(script: &str, page: &PageStage, shots: &Path, extra: &[&str]) -> Self {
        let chromium = page
            .netns
            .chromium_wrapper(&service_env("DESKGATE_CHROMIUM"));
        let mut args = vec![page.public_url.as_str(), page.stage.anvil.url.as_str()];
        args.extend_from_slice(extra);
        Self::spawn_at(script, &chromium, shots, &args)
    }

    /// Runs `script` with `args` (its public URL and wallet RPC first) and
    /// `shots` as its third argument, with `chromium` as the browser to
    /// launch (Debian's Chromium on this host, or a wrapper that runs it in
    /// a namespace).
    pub fn spawn_at(
        script: &str,
        chromium: impl AsRef<std::ffi::OsStr>,
        shots: &Path,
        args: &[&str],
    ) -> Self {
        let (urls, extra) = args.split_at(2.min(args.len()));
        let mut child = tokio::process::Command::new("node")
            .arg(repo_root().join("tests/browser").join(script))
            .args(urls)
            .arg(shots)
            .args(extra)
            .env(
                "NODE_PATH",
                format!("{}/node_modules", service_env("DESKGATE_PLAYWRIGHT_DIR")),
            )
            .env("DESKGATE_CHROMIUM", chromium.as_ref())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run node (make services installs it)");
        let to_driver = child.stdin.take().unwrap();
        let stages = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let log = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
            text
        });
        Self {
            child,
            to_driver,
            stages,
            log,
            reached: Vec::new(),
            shots: shots.to_path_buf(),
        }
    }

    /// The next stage the driver reports, with its name and the line it
    /// came on; `Ok(None)` at `done`. A `failed` stage, output that is not a
    /// stage, or an end without a verdict is an error.
    pub async fn next(&mut self) -> Result<Option<(String, Value, String)>, String> {
        let Some(line) = self
            .stages
            .next_line()
            .await
            .map_err(|e| format!("driver output: {e}"))?
        else {
            return Err("the driver stopped without a verdict".to_string());
        };
        let event: Value =
            serde_json::from_str(&line).map_err(|_| format!("driver said: {line}"))?;
        let name = event["stage"].as_str().unwrap_or_default().to_string();
        eprintln!("driver: {line}");
        match name.as_str() {
            "failed" => Err(format!("the page failed: {}", event["error"])),
            "done" => Ok(None),
            _ => {
                self.reached.push(name.clone());
                Ok(Some((name, event, line)))
            }
        }
    }

    /// Tells a waiting driver to go on.
    pub async fn reply(&mut self, word: &str) {
        self.to_driver
            .write_all(format!("{word}\n").as_bytes())
            .await
            .expect("the driver reads its stdin");
    }

    /// Waits for the driver's exit; fails with everything there is to know
    /// if `outcome` is an error or the driver did not exit cleanly, and if
    /// any of `wanted` was never reached.
    pub async fn finish(self, outcome: Result<(), String>, page: &PageStage, wanted: &[&str]) {
        self.finish_with(outcome, || page.stage.gate.output(), wanted)
            .await;
    }

    /// [`PageDriver::finish`] for a gate whose log `gate_log` tells.
    pub async fn finish_with(
        mut self,
        outcome: Result<(), String>,
        gate_log: impl FnOnce() -> String,
        wanted: &[&str],
    ) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let log = self.log.await.unwrap_or_default();
        if let Err(why) = outcome {
            panic!(
                "{why}\nstages reached: {:?}\nscreenshots: {}\ndriver log:\n{log}\ngate log:\n{}",
                self.reached,
                self.shots.display(),
                gate_log()
            );
        }
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "driver exit: {status:?}\n{log}"
        );
        for stage in wanted {
            assert!(
                self.reached.iter().any(|r| r == stage),
                "the page never reached {stage}: {:?}",
                self.reached
            );
        }
    }
}
