//! CPU energy from RAPL counters under `/sys/class/powercap`: every top-level package zone
//! (`intel-rapl:N`, which includes the cores) plus its `dram` subzone where present. The counters
//! are microjoules that wrap at `max_energy_range_uj`; each read adds the wrap-corrected delta, so
//! the meter must be read at least once per wrap period (minutes at full package power).

use super::{Meter, Source};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

struct Zone {
    energy: PathBuf,
    max_uj: u64,
    last_uj: u64,
}

pub struct Rapl {
    zones: Vec<Zone>,
    names: Vec<String>,
    total_uj: u128,
}

fn read_u64(path: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold a number", path.display()))
}

/// Bytes between two readings of a counter that wraps at `max` (one wrap at most).
pub fn wrapped_delta(last: u64, now: u64, max: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        max.saturating_sub(last) + now
    }
}

impl Rapl {
    pub fn open_system() -> Result<Rapl, String> {
        Rapl::open(Path::new("/sys/class/powercap")).map_err(|e| format!("{e:#}"))
    }

    /// Opens the package and DRAM zones under `root` (a powercap directory).
    pub fn open(root: &Path) -> Result<Rapl> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .with_context(|| format!("no RAPL: {} is absent", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
            })
            .collect();
        dirs.sort();
        let mut zones = vec![];
        let mut names = vec![];
        for pkg in dirs {
            let mut zone_dirs = vec![pkg.clone()];
            for sub in std::fs::read_dir(&pkg).into_iter().flatten().flatten() {
                let p = sub.path();
                let is_sub = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("intel-rapl:"));
                let name = std::fs::read_to_string(p.join("name")).unwrap_or_default();
                if is_sub && name.trim() == "dram" {
                    zone_dirs.push(p);
                }
            }
            for dir in zone_dirs {
                let energy = dir.join("energy_uj");
                let last_uj = read_u64(&energy)?;
                let max_uj = read_u64(&dir.join("max_energy_range_uj"))?;
                names.push(
                    std::fs::read_to_string(dir.join("name"))
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                );
                zones.push(Zone {
                    energy,
                    max_uj,
                    last_uj,
                });
            }
        }
        if zones.is_empty() {
            bail!("no RAPL package zone under {}", root.display());
        }
        Ok(Rapl {
            zones,
            names,
            total_uj: 0,
        })
    }
}

impl Meter for Rapl {
    fn source(&self) -> Source {
        Source::Rapl
    }
    fn resolution_j(&self) -> f64 {
        1e-6
    }
    fn describe(&self) -> String {
        format!(
            "rapl: {} (CPU package/DRAM counters)",
            self.names.join(" + ")
        )
    }
    fn joules(&mut self) -> Result<f64> {
        for z in &mut self.zones {
            let now = read_u64(&z.energy)?;
            self.total_uj += wrapped_delta(z.last_uj, now, z.max_uj) as u128;
            z.last_uj = now;
        }
        Ok(self.total_uj as f64 * 1e-6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(dir: &Path, name: &str, energy: u64, max: u64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(dir.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    #[test]
    fn counter_wrap_around() {
        assert_eq!(wrapped_delta(10, 30, 100), 20);
        assert_eq!(wrapped_delta(90, 5, 100), 15);
        assert_eq!(wrapped_delta(7, 7, 100), 0);
    }

    #[test]
    fn package_and_dram_zones_summed_across_a_wrap() {
        let d = tempfile::tempdir().unwrap();
        let pkg = d.path().join("intel-rapl:0");
        zone(&pkg, "package-0", 999_000_000, 1_000_000_000);
        zone(&pkg.join("intel-rapl:0:0"), "core", 5, 1_000_000_000);
        zone(&pkg.join("intel-rapl:0:1"), "dram", 100, 1_000_000_000);
        let mut r = Rapl::open(d.path()).unwrap();
        assert_eq!(r.names, vec!["package-0", "dram"]);
        assert_eq!(r.joules().unwrap(), 0.0);
        // package wraps: 999 J → 1 J at a 1000 J range = 2 J; dram +3 J; the core subzone is
        // inside the package and not added again.
        std::fs::write(pkg.join("energy_uj"), "1000000").unwrap();
        std::fs::write(pkg.join("intel-rapl:0:1/energy_uj"), "3000100").unwrap();
        std::fs::write(pkg.join("intel-rapl:0:0/energy_uj"), "900000000").unwrap();
        let j = r.joules().unwrap();
        assert!((j - 5.0).abs() < 1e-9, "{j}");
    }

    #[test]
    fn absent_rapl_is_an_error_not_zero() {
        let d = tempfile::tempdir().unwrap();
        assert!(Rapl::open(d.path()).is_err());
        assert!(Rapl::open(&d.path().join("missing")).is_err());
    }
}
