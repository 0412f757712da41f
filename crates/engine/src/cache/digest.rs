//! File digests: blake3 (memory-mapped, multi-threaded for large files) and a memo keyed by
//! (path, size, mtime, ctime, inode, device) so multi-GB weights are hashed once.
//!
//! Racy writes: a file modified within the same timestamp tick as its memo could keep a stale
//! memo, so a memo is only recorded for files whose mtime is at least 2 s in the past.

use super::Cache;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// blake3 of a file's content, hex. Large files are memory-mapped and hashed on all cores
/// (as `b3sum` does).
pub fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

/// blake3 of a file read sequentially on one thread (for comparison in the benchmark).
pub fn hash_file_plain(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Memo {
    path: String,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    digest: String,
}

fn stamp(path: &Path, meta: &fs::Metadata, digest: String) -> Memo {
    Memo {
        path: path.display().to_string(),
        size: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        ino: meta.ino(),
        dev: meta.dev(),
        digest,
    }
}

pub(super) fn memoised(cache: &Cache, path: &Path) -> Result<String> {
    let abs = fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta = fs::metadata(&abs).with_context(|| format!("cannot read {}", abs.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", abs.display());
    let memo_path = cache.root().join("digests").join(format!(
        "{}.json",
        &blake3::hash(abs.as_os_str().as_encoded_bytes()).to_hex()[..32]
    ));
    if let Some(m) = fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
        && stamp(&abs, &meta, m.digest.clone()) == m
    {
        return Ok(m.digest);
    }
    let digest = hash_file(&abs)?;
    let memo = stamp(&abs, &meta, digest.clone());
    let now_ns = super::now_us() as i128 * 1000;
    // Best effort: a memo that cannot be written (a full disk) costs a rehash next time, it must
    // not turn the digest itself into an error.
    if now_ns - memo.mtime_ns > 2_000_000_000 {
        let _ = cache.write_atomic(&memo_path, &serde_json::to_vec(&memo)?);
    }
    Ok(digest)
}

/// Drops memo entries of files that are gone or changed; returns how many.
pub(super) fn prune(cache: &Cache) -> usize {
    let mut n = 0;
    for e in fs::read_dir(cache.root().join("digests"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let keep = fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
            .and_then(|m| {
                let meta = fs::metadata(&m.path).ok()?;
                (stamp(Path::new(&m.path), &meta, m.digest.clone()) == m).then_some(())
            })
            .is_some();
        if !keep {
            let _ = fs::remove_file(e.path());
            n += 1;
        }
    }
    n
}
