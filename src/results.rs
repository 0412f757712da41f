//! A results folder's history of runs. Each run writes all its tables into a folder of its own,
//! `runs/<id>/` (the id is the UTC time it was written, `2026-12-07T01-48-03Z`), marks it
//! published, then points `latest` at it — a symlink replaced by a rename, so `latest` names
//! one whole run, the one before or the new one — and the results folder's own `*.parquet` and
//! `report.html` are links through `latest`. Each of them is one whole run's table; two opened
//! one after the other while a run publishes can be of two runs, so a reader of several tables
//! resolves the folder once ([`resolve`], as `edge-eval report` and `compare` do) or reads a
//! `runs/ID` folder. Earlier runs stay where they were written, for `edge-eval compare`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The folder runs are kept in, inside a results folder.
pub const RUNS: &str = "runs";
/// The link to the latest run, inside a results folder.
pub const LATEST: &str = "latest";
/// The file [`publish`] leaves in a run folder: the run's tables were all written. A folder
/// without it is a run that failed while writing, was killed, or is being written.
const PUBLISHED: &str = ".published";

/// A new, empty folder for this run's tables: `RESULTS/runs/<UTC time>` (`-2`, `-3` … when a
/// run of the same second exists).
pub fn new_run(results: &Path) -> Result<PathBuf> {
    let runs = results.join(RUNS);
    std::fs::create_dir_all(&runs).with_context(|| format!("cannot create {}", runs.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = runtime::chat::strftime("%Y-%m-%dT%H-%M-%SZ", secs);
    for n in 1.. {
        let id = if n == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let dir = runs.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!("an unbounded range ends")
}

/// Makes `run` (a folder made by [`new_run`], its tables written) the latest run of `results`:
/// `latest` is swapped to it, and each table of it gets a link `results/NAME → latest/NAME`
/// (a table file of an older layout is replaced; a link to a table this run does not have is
/// removed).
pub fn publish(results: &Path, run: &Path) -> Result<()> {
    let id = run
        .file_name()
        .context("a run folder has a name")?
        .to_string_lossy()
        .to_string();
    std::fs::write(run.join(PUBLISHED), "")
        .with_context(|| format!("cannot write {}", run.join(PUBLISHED).display()))?;
    let target = Path::new(RUNS).join(&id);
    let tmp = results.join(format!(".{LATEST}.{id}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::rename(&tmp, results.join(LATEST))
        .with_context(|| format!("cannot point {}/{LATEST} at {id}", results.display()))?;

    let mut names = vec![];
    for e in std::fs::read_dir(run).with_context(|| format!("cannot list {}", run.display()))? {
        let name = e?.file_name().to_string_lossy().to_string();
        if is_table(&name) {
            names.push(name);
        }
    }
    for e in std::fs::read_dir(results)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if !is_table(&name) {
            continue;
        }
        // A regular file is an older layout's table: replaced below by the link, or removed.
        if !names.contains(&name) || !e.file_type()?.is_symlink() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("cannot replace {}", e.path().display()))?;
        }
    }
    for name in &names {
        let link = results.join(name);
        // Every link is `latest/NAME`, so one a concurrent run made first is this one.
        match std::os::unix::fs::symlink(Path::new(LATEST).join(name), &link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("cannot create {}", link.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_table(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".parquet") || name == "report.html")
}

/// The run a folder names: a results folder's latest run, or the folder itself (a run folder,
/// or a results folder written before runs were kept).
pub fn resolve(dir: &Path) -> PathBuf {
    let latest = dir.join(LATEST);
    match latest.canonicalize() {
        Ok(p) if p.is_dir() => p,
        _ => dir.to_path_buf(),
    }
}

/// A report's title for a folder: the results folder's name, with the run's id for a run
/// folder (`quickstart, run 2026-12-07T01-48-03Z`).
pub fn title(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string());
    let parent = dir.parent();
    match (name(dir), parent.and_then(name)) {
        (Some(id), Some(runs)) if runs == RUNS => {
            let results = parent
                .and_then(Path::parent)
                .and_then(name)
                .unwrap_or_default();
            format!("{results}, run {id}")
        }
        (Some(n), _) => n,
        _ => "edge-eval".into(),
    }
}

/// The ids of the published runs of a results folder, oldest first (by time, then by the
/// `-N` of runs of the same second).
pub fn runs(results: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(results.join(RUNS))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(PUBLISHED).is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    ids.sort_by_key(|id| order(id));
    ids
}

/// A run id as (time, n): `2026-12-07T01-48-03Z-10` after `…Z-2`.
fn order(id: &str) -> (String, u64) {
    match id.rsplit_once("Z-") {
        Some((stamp, n)) if n.parse::<u64>().is_ok() => {
            (format!("{stamp}Z"), n.parse().unwrap_or(0))
        }
        _ => (id.to_string(), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_one_second_are_ordered_by_their_number() {
        let mut ids = [
            "2026-12-07T01-48-03Z-10",
            "2026-12-07T01-48-04Z",
            "2026-12-07T01-48-03Z-2",
            "2026-12-07T01-48-03Z",
        ];
        ids.sort_by_key(|id| order(id));
        assert_eq!(
            ids,
            [
                "2026-12-07T01-48-03Z",
                "2026-12-07T01-48-03Z-2",
                "2026-12-07T01-48-03Z-10",
                "2026-12-07T01-48-04Z"
            ]
        );
    }

    #[test]
    fn each_run_is_published_whole_and_earlier_runs_stay() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path();
        // A folder of the older layout: tables written in place.
        std::fs::write(results.join("metrics.parquet"), "old").unwrap();
        std::fs::write(results.join("measure.parquet"), "old").unwrap();

        let first = new_run(results).unwrap();
        std::fs::write(first.join("metrics.parquet"), "run 1").unwrap();
        std::fs::write(first.join("runs.parquet"), "run 1").unwrap();
        publish(results, &first).unwrap();
        let read = |name: &str| std::fs::read_to_string(results.join(name)).ok();
        assert_eq!(read("metrics.parquet").as_deref(), Some("run 1"));
        assert_eq!(read("runs.parquet").as_deref(), Some("run 1"));
        // The older layout's table that this run does not have is gone, not left to mix.
        assert_eq!(read("measure.parquet"), None);

        // A second run in the same second (or a later one) gets its own folder.
        let second = new_run(results).unwrap();
        assert!(second.is_dir() && std::fs::read_dir(&second).unwrap().next().is_none());
        std::fs::write(second.join("runs.parquet"), "run 2").unwrap();
        publish(results, &second).unwrap();
        assert_eq!(read("runs.parquet").as_deref(), Some("run 2"));
        assert_eq!(read("metrics.parquet"), None, "run 2 wrote no metrics");
        assert_eq!(
            std::fs::read_to_string(first.join("metrics.parquet")).unwrap(),
            "run 1"
        );
        assert_eq!(runs(results).len(), 2);
        // A run that never finished writing is no run to compare.
        let unfinished = new_run(results).unwrap();
        std::fs::write(unfinished.join("runs.parquet"), "half").unwrap();
        assert_eq!(runs(results).len(), 2);
        assert_eq!(resolve(results), second.canonicalize().unwrap());
        assert_eq!(resolve(&first), first);
        let name = results.file_name().unwrap().to_string_lossy().to_string();
        let id = first.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(title(&first), format!("{name}, run {id}"));
        assert_eq!(title(results), name);
    }
}
