//! The GPU tier table: which GPUs count as "this one or better" when a model names a minimum
//! GPU, and how NVML's marketing names map onto the table's short names.

use std::collections::{BTreeMap, HashMap};

use infermine_protocol::{DeviceKind, GpuInfo};

/// Words in NVML names that do not tell chips apart: vendor and brand words, form factors
/// (`SXM4`, `PCIe`, `NVL`) and memory types. Memory sizes (`80GB`) are dropped separately.
const NOISE_WORDS: &[&str] = &[
    "NVIDIA",
    "GEFORCE",
    "RTX",
    "TESLA",
    "QUADRO",
    "PCIE",
    "NVL",
    "GENERATION",
    "HBM2",
    "HBM2E",
    "HBM3",
    "HBM3E",
];

/// GPUs ranked by a numeric tier, loaded from the registry's `[gpu_tiers]` table.
///
/// A model's minimum is met by any GPU whose tier is at least the minimum's tier. Tier 0 is
/// reserved for GPUs the table does not know (and for CPUs): they meet no GPU minimum but
/// may still run models that have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuTiers {
    /// Names as the table writes them, with their tiers, lowest tier first.
    entries: Vec<(String, u32)>,
    /// Normalized name → index into `entries`.
    by_key: HashMap<String, usize>,
}

impl GpuTiers {
    /// Builds the table, or says what is wrong with it (the caller adds the file name).
    pub(super) fn from_table(table: BTreeMap<String, u32>) -> Result<Self, String> {
        if table.is_empty() {
            return Err(
                "the table is empty; list at least every GPU a model names in min_gpu".to_owned(),
            );
        }
        let mut entries: Vec<(String, u32)> = table.into_iter().collect();
        entries.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let mut by_key: HashMap<String, usize> = HashMap::with_capacity(entries.len());
        for (index, (name, tier)) in entries.iter().enumerate() {
            if *tier == 0 {
                return Err(format!(
                    "`{name}` has tier 0, which is reserved for unknown GPUs; use 1 or more"
                ));
            }
            let key = normalize(name);
            if key.is_empty() {
                return Err(format!(
                    "`{name}` names no GPU once vendor words like NVIDIA and RTX are ignored"
                ));
            }
            if let Some(&earlier) = by_key.get(&key) {
                let other = &entries[earlier].0;
                return Err(format!(
                    "`{other}` and `{name}` name the same GPU; keep one"
                ));
            }
            by_key.insert(key, index);
        }
        Ok(Self { entries, by_key })
    }

    /// The tier of a GPU given by its table name (`4060 Ti`) or its NVML name
    /// (`NVIDIA GeForce RTX 4060 Ti`). `None` for a GPU the table does not list, including
    /// laptop variants and MIG slices, which are slower than the full card of the same name.
    /// Callers should log such names: the table may need a new entry.
    pub fn tier_of(&self, name: &str) -> Option<u32> {
        self.lookup(name).map(|(_, tier)| tier)
    }

    /// The table's name for a GPU given by its NVML name, e.g. `A100` for
    /// `NVIDIA A100-SXM4-80GB`.
    pub fn canonical_name(&self, name: &str) -> Option<&str> {
        self.lookup(name).map(|(name, _)| name)
    }

    /// The tier a device counts as: 0 for a CPU or a GPU the table does not know.
    pub fn device_tier(&self, device: &GpuInfo) -> u32 {
        match device.kind {
            DeviceKind::Cpu => 0,
            DeviceKind::Cuda => self.tier_of(&device.name).unwrap_or(0),
        }
    }

    /// Every entry as `(name, tier)`, lowest tier first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.entries
            .iter()
            .map(|(name, tier)| (name.as_str(), *tier))
    }

    fn lookup(&self, name: &str) -> Option<(&str, u32)> {
        let index = *self.by_key.get(&normalize(name))?;
        let (name, tier) = &self.entries[index];
        Some((name, *tier))
    }
}

/// Reduces a GPU name to the words that identify the chip, upper-cased, so that table names
/// and the many spellings NVML reports meet: `NVIDIA A100-SXM4-80GB` and `A100` both become
/// `A100`, `NVIDIA GeForce RTX 4060 Ti` becomes `4060 TI`.
fn normalize(name: &str) -> String {
    name.split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_uppercase)
        .filter(|word| !is_noise(word))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_noise(word: &str) -> bool {
    NOISE_WORDS.contains(&word) || is_sxm(word) || is_memory_size(word)
}

fn is_sxm(word: &str) -> bool {
    word.strip_prefix("SXM")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
}

fn is_memory_size(word: &str) -> bool {
    word.strip_suffix("GB")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use infermine_protocol::{DeviceKind, GpuInfo};

    use super::{GpuTiers, normalize};
    use crate::registry::Registry;

    fn builtin_tiers() -> GpuTiers {
        Registry::builtin().gpu_tiers().clone()
    }

    fn tier(tiers: &GpuTiers, name: &str) -> u32 {
        tiers
            .tier_of(name)
            .unwrap_or_else(|| panic!("`{name}` is in the built-in tier table"))
    }

    #[test]
    fn nvml_names_map_to_table_entries() {
        let tiers = builtin_tiers();
        let cases = [
            ("NVIDIA GeForce RTX 4090", Some("4090")),
            ("NVIDIA GeForce RTX 4060 Ti", Some("4060 Ti")),
            ("NVIDIA GeForce RTX 4060", Some("4060")),
            ("NVIDIA GeForce RTX 3070 Ti", Some("3070 Ti")),
            ("NVIDIA GeForce RTX 4070 Ti SUPER", Some("4070 Ti Super")),
            ("NVIDIA GeForce RTX 4080 SUPER", Some("4080 Super")),
            ("NVIDIA GeForce RTX 5090", Some("5090")),
            ("NVIDIA RTX A4000", Some("A4000")),
            ("NVIDIA RTX A6000", Some("A6000")),
            ("NVIDIA RTX 6000 Ada Generation", Some("RTX 6000 Ada")),
            ("NVIDIA A100-SXM4-80GB", Some("A100")),
            ("NVIDIA A100-PCIE-40GB", Some("A100")),
            ("NVIDIA A100 80GB PCIe", Some("A100")),
            ("NVIDIA H100 80GB HBM3", Some("H100")),
            ("NVIDIA H100 PCIe", Some("H100")),
            ("NVIDIA H100 NVL", Some("H100")),
            ("NVIDIA H200", Some("H200")),
            ("NVIDIA L40S", Some("L40S")),
            ("NVIDIA L4", Some("L4")),
            ("NVIDIA A10G", Some("A10G")),
            ("Tesla T4", Some("T4")),
            ("Tesla V100-SXM2-16GB", Some("V100")),
            ("nvidia geforce rtx 3090", Some("3090")),
            // Slower than the card of the same number: unknown on purpose.
            ("NVIDIA GeForce RTX 3060 Laptop GPU", None),
            ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", None),
            ("Quadro RTX 6000", None),
            ("NVIDIA GeForce GTX 1080 Ti", None),
            ("cpu", None),
            ("", None),
        ];
        for (nvml, expected) in cases {
            assert_eq!(tiers.canonical_name(nvml), expected, "NVML name `{nvml}`");
        }
    }

    #[test]
    fn normalization_drops_vendor_words_sizes_and_form_factors() {
        assert_eq!(normalize("NVIDIA A100-SXM4-80GB"), "A100");
        assert_eq!(normalize("NVIDIA GeForce RTX 4060 Ti"), "4060 TI");
        assert_eq!(normalize("  NVIDIA   H100  80GB   HBM3 "), "H100");
        assert_eq!(normalize("RTX 6000 Ada"), "6000 ADA");
    }

    #[test]
    fn seed_consumer_series_order_holds() {
        let t = builtin_tiers();
        for series in [
            ["3060", "3070", "3080", "3090"],
            ["4060", "4070", "4080", "4090"],
        ] {
            for pair in series.windows(2) {
                assert!(
                    tier(&t, pair[0]) < tier(&t, pair[1]),
                    "{} < {}",
                    pair[0],
                    pair[1]
                );
            }
        }
    }

    #[test]
    fn seed_ti_is_slightly_above_the_same_number() {
        let t = builtin_tiers();
        let cases = [
            ("3060", "3060 Ti", "3070"),
            ("3070", "3070 Ti", "3080"),
            ("3080", "3080 Ti", "3090"),
            ("4060", "4060 Ti", "4070"),
            ("4070", "4070 Ti", "4080"),
        ];
        for (plain, ti, next) in cases {
            assert!(tier(&t, plain) < tier(&t, ti), "{plain} < {ti}");
            assert!(tier(&t, ti) < tier(&t, next), "{ti} < {next}");
        }
        assert!(tier(&t, "3090") < tier(&t, "3090 Ti"));
    }

    #[test]
    fn seed_datacenter_order_holds() {
        let t = builtin_tiers();
        let order = ["A4000", "A4500", "A5000", "A100", "H100"];
        for pair in order.windows(2) {
            assert!(
                tier(&t, pair[0]) < tier(&t, pair[1]),
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
        assert!(tier(&t, "H200") >= tier(&t, "H100"));
    }

    #[test]
    fn seed_minimum_equivalences_hold() {
        let t = builtin_tiers();
        for group in [
            &["3070", "4060 Ti", "A4000"][..],
            &["3090", "4080", "A4500"][..],
            &["4090", "A100"][..],
        ] {
            let first = tier(&t, group[0]);
            for name in group {
                assert_eq!(tier(&t, name), first, "{name} ranks with {}", group[0]);
            }
        }
    }

    #[test]
    fn unknown_gpus_and_cpus_count_as_tier_zero() {
        let t = builtin_tiers();
        let device = |kind, name: &str| GpuInfo {
            index: 0,
            kind,
            uuid: "GPU-test".to_owned(),
            name: name.to_owned(),
            vram_mb: 24_000,
        };
        assert_eq!(
            t.device_tier(&device(DeviceKind::Cuda, "Mystery GPU 9000")),
            0
        );
        assert_eq!(t.device_tier(&device(DeviceKind::Cpu, "4090")), 0);
        let rtx4090 = device(DeviceKind::Cuda, "NVIDIA GeForce RTX 4090");
        assert_eq!(t.device_tier(&rtx4090), tier(&t, "4090"));
    }

    #[test]
    fn table_errors_name_the_entry() {
        let table = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
            pairs.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
        };
        let err = GpuTiers::from_table(table(&[])).expect_err("empty table");
        assert!(err.contains("empty"), "{err}");
        let err = GpuTiers::from_table(table(&[("3090", 0)])).expect_err("tier 0");
        assert!(err.contains("`3090` has tier 0"), "{err}");
        let err = GpuTiers::from_table(table(&[("4060 Ti", 1), ("RTX 4060 TI", 2)]))
            .expect_err("same GPU twice");
        assert!(err.contains("name the same GPU"), "{err}");
        let err = GpuTiers::from_table(table(&[("NVIDIA RTX", 1)])).expect_err("no chip");
        assert!(err.contains("names no GPU"), "{err}");
    }
}
