//! `deskgate gpus` and the launcher's start on hosts with and without NVIDIA.

mod support;

use std::path::Path;

use support::{free_port, run_deskgate};

/// Whether this host has the NVIDIA management library (then `auto` works).
fn has_nvml() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/nvidia/lib64",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("libnvidia-ml.so.1").exists())
}

#[test]
fn gpus_auto_says_clearly_when_there_is_no_nvidia_driver() {
    let (status, output) = run_deskgate(&["gpus"], &[("DESKGATE_GPUS", "auto")]);
    if has_nvml() {
        assert!(status.success(), "{output}");
        assert!(output.starts_with("INDEX"), "{output}");
        assert!(output.contains("GPU-"), "NVML UUIDs: {output}");
        return;
    }
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("NVML is not available"), "{output}");
    assert!(
        output.contains("DESKGATE_GPUS=fake:N"),
        "says the way out: {output}"
    );
}

#[test]
fn gpus_fake_prints_virtual_gpus() {
    let (status, output) = run_deskgate(&["gpus"], &[("DESKGATE_GPUS", "fake:3")]);
    assert!(status.success(), "{output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 4, "{output}");
    assert!(
        lines[3].starts_with("2 ") && lines[3].contains("fake-2"),
        "{output}"
    );
}

#[test]
fn launcher_without_nvidia_refuses_to_start_and_says_why() {
    if has_nvml() {
        return;
    }
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let (status, output) = run_deskgate(
        &["launcher"],
        &[
            ("DESKGATE_GPUS", "auto"),
            ("DESKGATE_LAUNCHER_BIND", &bind),
            (
                "DESKGATE_LAUNCHER_TOKEN",
                "5b1e9c7d3a2f4e6081c9d7b5a3f1e2d4c6b8a0f9e7d5c3b1a2f4e6d8c0b9a7e5",
            ),
        ],
    );
    assert!(!status.success(), "{output}");
    assert!(output.contains("NVML is not available"), "{output}");
}
