//! Device discovery: the NVIDIA GPUs NVML sees, or CPU slots when there is no usable driver,
//! plus the live figures sent with heartbeats.

use infermine_protocol::{DeviceKind, GpuInfo, GpuStats};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

const MIB: u64 = 1024 * 1024;

/// The devices this agent drives, one slot each.
pub struct Devices {
    /// Kept open so heartbeats can read live figures; absent on the CPU fallback.
    nvml: Option<Nvml>,
    infos: Vec<GpuInfo>,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("nvml", &self.nvml.is_some())
            .field("infos", &self.infos)
            .finish()
    }
}

impl Devices {
    /// Finds the NVIDIA GPUs, or falls back to `cpu_slots` CPU devices when NVML cannot start
    /// (no driver) or sees no GPU. Blocking: NVML talks to the driver.
    pub fn discover(cpu_slots: u32) -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                tracing::info!("no NVIDIA driver found ({e}); running on CPU");
                return Self::cpu(cpu_slots);
            }
        };
        let infos = match nvml_devices(&nvml) {
            Ok(infos) if !infos.is_empty() => infos,
            Ok(_) => {
                tracing::info!("the NVIDIA driver reports no GPU; running on CPU");
                return Self::cpu(cpu_slots);
            }
            Err(e) => {
                tracing::warn!("NVML could not list the GPUs ({e}); running on CPU");
                return Self::cpu(cpu_slots);
            }
        };
        for gpu in &infos {
            tracing::info!(
                index = gpu.index,
                uuid = %gpu.uuid,
                vram_mb = gpu.vram_mb,
                "found GPU {}",
                gpu.name
            );
        }
        Self {
            nvml: Some(nvml),
            infos,
        }
    }

    /// `slots` CPU devices, named after the processor; each reports the machine's RAM.
    pub fn cpu(slots: u32) -> Self {
        let name = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model_name(&text))
            .unwrap_or_else(|| "unknown processor".to_owned());
        let ram_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| meminfo_mb(&text, "MemTotal"))
            .unwrap_or(0);
        Self::fixed(cpu_devices(slots, &name, ram_mb))
    }

    /// A fixed device list, without NVML (tests and benchmarks that fake hardware).
    pub fn fixed(infos: Vec<GpuInfo>) -> Self {
        Self { nvml: None, infos }
    }

    pub fn infos(&self) -> &[GpuInfo] {
        &self.infos
    }

    /// Live figures per device. A figure NVML cannot read is reported as 0 rather than
    /// dropping the heartbeat. Blocking.
    pub fn stats(&self) -> Vec<GpuStats> {
        let cpu_used_mb = || {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| {
                    let total = meminfo_mb(&text, "MemTotal")?;
                    let available = meminfo_mb(&text, "MemAvailable")?;
                    Some(total.saturating_sub(available))
                })
                .unwrap_or(0)
        };
        self.infos
            .iter()
            .map(|info| match (info.kind, &self.nvml) {
                (DeviceKind::Cuda, Some(nvml)) => nvml_stats(nvml, info.index),
                (DeviceKind::Cpu, _) => GpuStats {
                    index: info.index,
                    memory_used_mb: cpu_used_mb(),
                    ..GpuStats::default()
                },
                (DeviceKind::Cuda, None) => GpuStats {
                    index: info.index,
                    ..GpuStats::default()
                },
            })
            .collect()
    }
}

fn nvml_devices(nvml: &Nvml) -> Result<Vec<GpuInfo>, nvml_wrapper::error::NvmlError> {
    (0..nvml.device_count()?)
        .map(|index| {
            let device = nvml.device_by_index(index)?;
            Ok(GpuInfo {
                index,
                kind: DeviceKind::Cuda,
                uuid: device.uuid()?,
                name: device.name()?,
                vram_mb: device.memory_info()?.total / MIB,
            })
        })
        .collect()
}

fn nvml_stats(nvml: &Nvml, index: u32) -> GpuStats {
    let mut stats = GpuStats {
        index,
        ..GpuStats::default()
    };
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(e) => {
            tracing::debug!(index, "NVML lost the GPU: {e}");
            return stats;
        }
    };
    if let Ok(rates) = device.utilization_rates() {
        stats.utilization_pct = rates.gpu;
    }
    if let Ok(memory) = device.memory_info() {
        stats.memory_used_mb = memory.used / MIB;
    }
    if let Ok(temperature) = device.temperature(TemperatureSensor::Gpu) {
        stats.temperature_c = temperature;
    }
    stats
}

fn cpu_devices(slots: u32, processor: &str, ram_mb: u64) -> Vec<GpuInfo> {
    (0..slots)
        .map(|index| GpuInfo {
            index,
            kind: DeviceKind::Cpu,
            uuid: if slots == 1 {
                "cpu".to_owned()
            } else {
                format!("cpu-{index}")
            },
            name: format!("{processor} (CPU)"),
            vram_mb: ram_mb,
        })
        .collect()
}

/// The first `model name` line of /proc/cpuinfo.
fn cpu_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "model name" && !value.is_empty()).then(|| value.to_owned())
    })
}

/// A `Key: N kB` line of /proc/meminfo, in MiB.
fn meminfo_mb(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim() != key {
            return None;
        }
        let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\ncpu MHz\t\t: 2445.406\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n";

    #[test]
    fn cpuinfo_model_name_is_parsed() {
        assert_eq!(
            cpu_model_name(CPUINFO).as_deref(),
            Some("AMD EPYC 7763 64-Core Processor")
        );
        assert_eq!(cpu_model_name("processor : 0\n"), None);
    }

    #[test]
    fn meminfo_is_read_in_mib() {
        let meminfo = "MemTotal:       16303428 kB\nMemFree:         1000000 kB\nMemAvailable:    8151714 kB\n";
        assert_eq!(meminfo_mb(meminfo, "MemTotal"), Some(15921));
        assert_eq!(meminfo_mb(meminfo, "MemAvailable"), Some(7960));
        assert_eq!(meminfo_mb(meminfo, "SwapTotal"), None);
    }

    #[test]
    fn one_cpu_slot_is_plain_cpu_and_several_are_numbered() {
        let one = cpu_devices(1, "Xeon", 1024);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].uuid, "cpu");
        assert_eq!(one[0].kind, DeviceKind::Cpu);
        assert_eq!(one[0].name, "Xeon (CPU)");
        assert_eq!(one[0].vram_mb, 1024);

        let three = cpu_devices(3, "Xeon", 1024);
        let uuids: Vec<_> = three.iter().map(|d| d.uuid.as_str()).collect();
        assert_eq!(uuids, ["cpu-0", "cpu-1", "cpu-2"]);
        let indexes: Vec<_> = three.iter().map(|d| d.index).collect();
        assert_eq!(indexes, [0, 1, 2]);
    }

    #[test]
    fn cpu_fallback_reports_this_machine() {
        let devices = Devices::cpu(2);
        assert_eq!(devices.infos().len(), 2);
        assert!(devices.infos()[0].name.ends_with(" (CPU)"));
        assert!(
            devices.infos()[0].vram_mb > 0,
            "MemTotal read from /proc/meminfo"
        );
        let stats = devices.stats();
        assert_eq!(stats.len(), 2);
        assert!(stats[0].memory_used_mb > 0);
    }
}
