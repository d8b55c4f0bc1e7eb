//! GPU inventory: which GPUs this host offers, from NVML (`auto`), an explicit
//! index list, or `fake:N` virtual GPUs for hosts without NVIDIA.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

use crate::config::GpuSelection;

/// Whether a GPU can take work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum GpuHealth {
    /// NVML answers and reports no uncorrected memory errors.
    Healthy,
    /// Something NVML reported makes the GPU unfit; the text says what.
    Unhealthy(String),
}

/// One GPU as the inventory reports it (and a launcher's `GET /v1/gpus`
/// answers, which the gate reads back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index (the Docker device id).
    pub index: u32,
    /// NVML UUID, or `fake-<index>` for virtual GPUs.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Total memory in bytes (0 for virtual GPUs).
    pub memory_total_bytes: u64,
    /// GPU utilisation in percent over NVML's last sample period.
    pub utilization_percent: Option<u32>,
    /// Health as far as NVML reports it.
    pub health: GpuHealth,
    /// True for `fake:N` GPUs.
    pub fake: bool,
}

/// Why the inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The NVIDIA driver library is missing: no NVIDIA GPU on this host.
    #[error(
        "NVML is not available on this host ({0}): no NVIDIA driver is installed. \
         Set DESKGATE_GPUS=fake:N to run with N virtual GPUs"
    )]
    NvmlUnavailable(String),
    /// NVML loaded but failed.
    #[error("NVML failed: {0}")]
    Nvml(#[from] NvmlError),
    /// NVML works but reports no GPU.
    #[error("NVML reports no GPU on this host. Set DESKGATE_GPUS=fake:N to run with virtual GPUs")]
    NoGpus,
    /// An explicitly listed index does not exist.
    #[error("DESKGATE_GPUS names GPU {index}, but NVML reports only {count} GPU(s) (indices 0 to {last})", last = count.saturating_sub(1))]
    NoSuchIndex {
        /// The missing index.
        index: u32,
        /// How many GPUs NVML reports.
        count: u32,
    },
    /// The blocking task reading NVML panicked or was cancelled.
    #[error("the GPU inventory read did not finish: {0}")]
    Interrupted(String),
}

/// [`inventory`] on a blocking thread, for async callers: NVML calls block.
pub async fn read_inventory(selection: &GpuSelection) -> Result<Vec<GpuInfo>, InventoryError> {
    let selection = selection.clone();
    tokio::task::spawn_blocking(move || inventory(&selection))
        .await
        .map_err(|join| InventoryError::Interrupted(join.to_string()))?
}

/// Reads the inventory for `selection`.
pub fn inventory(selection: &GpuSelection) -> Result<Vec<GpuInfo>, InventoryError> {
    match selection {
        GpuSelection::Fake(n) => Ok((0..*n).map(fake_gpu).collect()),
        GpuSelection::Auto => {
            let nvml = init_nvml()?;
            let count = nvml.device_count()?;
            if count == 0 {
                return Err(InventoryError::NoGpus);
            }
            (0..count).map(|i| read_gpu(&nvml, i)).collect()
        }
        GpuSelection::Indices(indices) => {
            let nvml = init_nvml()?;
            let count = nvml.device_count()?;
            indices
                .iter()
                .map(|&index| {
                    if index >= count {
                        Err(InventoryError::NoSuchIndex { index, count })
                    } else {
                        read_gpu(&nvml, index)
                    }
                })
                .collect()
        }
    }
}

fn init_nvml() -> Result<Nvml, InventoryError> {
    Nvml::init().map_err(|err| match err {
        NvmlError::LibloadingError(e) => InventoryError::NvmlUnavailable(e.to_string()),
        NvmlError::DriverNotLoaded => InventoryError::NvmlUnavailable("driver not loaded".into()),
        other => InventoryError::Nvml(other),
    })
}

fn fake_gpu(index: u32) -> GpuInfo {
    GpuInfo {
        index,
        uuid: format!("fake-{index}"),
        name: "virtual GPU (fake)".to_string(),
        memory_total_bytes: 0,
        utilization_percent: None,
        health: GpuHealth::Healthy,
        fake: true,
    }
}

fn read_gpu(nvml: &Nvml, index: u32) -> Result<GpuInfo, InventoryError> {
    let device = nvml.device_by_index(index)?;
    let uuid = device.uuid()?;
    let name = device.name()?;
    let memory_total_bytes = device.memory_info()?.total;
    let utilization_percent = device.utilization_rates().ok().map(|u| u.gpu);
    // Uncorrected ECC errors since the driver loaded mean the memory is not to
    // be trusted; GPUs without ECC report NotSupported, which is fine.
    let health = match device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
        Ok(0) | Err(NvmlError::NotSupported) => GpuHealth::Healthy,
        Ok(n) => GpuHealth::Unhealthy(format!("{n} uncorrected ECC error(s)")),
        Err(NvmlError::GpuLost) => GpuHealth::Unhealthy("GPU fell off the bus".into()),
        Err(other) => GpuHealth::Unhealthy(format!("ECC query failed: {other}")),
    };
    Ok(GpuInfo {
        index,
        uuid,
        name,
        memory_total_bytes,
        utilization_percent,
        health,
        fake: false,
    })
}

/// The health of each GPU in `indices` now. A GPU NVML cannot read is
/// unhealthy with NVML's reason; if NVML itself fails, every GPU is. Virtual
/// GPUs are always healthy.
pub fn health_check(selection: &GpuSelection, indices: &[u32]) -> Vec<(u32, GpuHealth)> {
    if let GpuSelection::Fake(_) = selection {
        return indices.iter().map(|&i| (i, GpuHealth::Healthy)).collect();
    }
    let nvml = match init_nvml() {
        Ok(nvml) => nvml,
        Err(err) => {
            let why = format!("NVML unavailable: {err}");
            return indices
                .iter()
                .map(|&i| (i, GpuHealth::Unhealthy(why.clone())))
                .collect();
        }
    };
    indices
        .iter()
        .map(|&index| {
            let health = match read_gpu(&nvml, index) {
                Ok(info) => info.health,
                Err(err) => GpuHealth::Unhealthy(format!("NVML cannot read it: {err}")),
            };
            (index, health)
        })
        .collect()
}

/// Turns successive health checks into changes, so that the GPU actors hear
/// only when a GPU turns unhealthy or recovers. GPUs start out healthy, as
/// their actors do.
#[derive(Debug, Default)]
pub struct HealthTracker {
    last: std::collections::HashMap<u32, GpuHealth>,
}

impl HealthTracker {
    /// The changes since the previous check: `(index, Some(reason))` for a
    /// GPU that turned unhealthy (or changed reason), `(index, None)` for one
    /// that recovered.
    pub fn changes(&mut self, current: Vec<(u32, GpuHealth)>) -> Vec<(u32, Option<String>)> {
        let mut changes = Vec::new();
        for (index, health) in current {
            let before = self.last.get(&index).unwrap_or(&GpuHealth::Healthy);
            if *before != health {
                changes.push((
                    index,
                    match &health {
                        GpuHealth::Healthy => None,
                        GpuHealth::Unhealthy(why) => Some(why.clone()),
                    },
                ));
            }
            self.last.insert(index, health);
        }
        changes
    }
}

/// Checks the health of `indices` every `interval` and calls `report` with
/// each change (see [`HealthTracker`]), until the returned task is aborted.
/// NVML calls block, so each check runs on the blocking pool.
pub fn spawn_health_feed(
    selection: GpuSelection,
    indices: Vec<u32>,
    interval: std::time::Duration,
    report: impl Fn(u32, Option<String>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = HealthTracker::default();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (selection, indices) = (selection.clone(), indices.clone());
            let Ok(current) =
                tokio::task::spawn_blocking(move || health_check(&selection, &indices)).await
            else {
                continue;
            };
            for (index, reason) in tracker.changes(current) {
                match &reason {
                    Some(why) => tracing::warn!(gpu = index, reason = %why, "GPU unhealthy"),
                    None => tracing::info!(gpu = index, "GPU healthy again"),
                }
                report(index, reason);
            }
        }
    })
}

/// Formats the inventory as the table `deskgate gpus` prints.
pub fn render_table(gpus: &[GpuInfo]) -> String {
    let mut out = format!(
        "{:<5} {:<42} {:<28} {:>10} {:>5}  {}\n",
        "INDEX", "UUID", "NAME", "MEMORY", "UTIL", "HEALTH"
    );
    for gpu in gpus {
        let memory = if gpu.fake {
            "-".to_string()
        } else {
            format!("{} MiB", gpu.memory_total_bytes / (1024 * 1024))
        };
        let util = gpu
            .utilization_percent
            .map_or_else(|| "-".to_string(), |u| format!("{u}%"));
        let health = match &gpu.health {
            GpuHealth::Healthy => "healthy".to_string(),
            GpuHealth::Unhealthy(why) => format!("unhealthy: {why}"),
        };
        out.push_str(&format!(
            "{:<5} {:<42} {:<28} {:>10} {:>5}  {}\n",
            gpu.index, gpu.uuid, gpu.name, memory, util, health
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_inventory_has_distinct_healthy_gpus() {
        let gpus = inventory(&GpuSelection::Fake(3)).unwrap();
        let indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
        assert_eq!(indices, [0, 1, 2]);
        assert!(
            gpus.iter()
                .all(|g| g.fake && g.health == GpuHealth::Healthy)
        );
        let table = render_table(&gpus);
        assert_eq!(table.lines().count(), 4);
        assert!(table.contains("fake-2"));
    }

    #[test]
    fn health_tracker_reports_only_changes() {
        let mut tracker = HealthTracker::default();
        let sick = || GpuHealth::Unhealthy("2 uncorrected ECC error(s)".into());
        assert!(
            tracker
                .changes(vec![(0, GpuHealth::Healthy), (1, GpuHealth::Healthy)])
                .is_empty(),
            "healthy at first is no news"
        );
        assert_eq!(
            tracker.changes(vec![(0, GpuHealth::Healthy), (1, sick())]),
            vec![(1, Some("2 uncorrected ECC error(s)".to_string()))]
        );
        assert!(tracker.changes(vec![(1, sick())]).is_empty(), "same again");
        assert_eq!(
            tracker.changes(vec![(
                1,
                GpuHealth::Unhealthy("GPU fell off the bus".into())
            )]),
            vec![(1, Some("GPU fell off the bus".to_string()))]
        );
        assert_eq!(
            tracker.changes(vec![(1, GpuHealth::Healthy)]),
            vec![(1, None)]
        );
    }

    #[tokio::test]
    async fn health_feed_on_fake_gpus_reports_nothing() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let feed = spawn_health_feed(
            GpuSelection::Fake(2),
            vec![0, 1],
            std::time::Duration::from_millis(10),
            move |index, reason| {
                let _ = tx.send((index, reason));
            },
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        feed.abort();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn health_check_without_nvml_marks_every_gpu_unhealthy() {
        // CI hosts have no NVIDIA driver; on a GPU host NVML answers instead.
        if init_nvml().is_ok() {
            let health = health_check(&GpuSelection::Auto, &[0]);
            assert_eq!(health.len(), 1);
            return;
        }
        let health = health_check(&GpuSelection::Auto, &[0, 1]);
        assert_eq!(health.len(), 2);
        for (_, h) in health {
            match h {
                GpuHealth::Unhealthy(why) => assert!(why.contains("NVML"), "{why}"),
                GpuHealth::Healthy => panic!("healthy without NVML"),
            }
        }
    }
}
