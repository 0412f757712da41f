//! The content-addressed cache. It knows bytes and keys, not models.
//!
//! Layout under the cache root:
//!
//! ```text
//! objects/ab/<blake3>      immutable, read-only files named by their content digest
//! actions/ab/<key>.json    manifest of a finished stage: output digests, record, rows, timings
//! digests/<hash>.json      memo of file digests by (path, size, mtime, ctime, inode)
//! history/<pipeline>.json  key components of each stage id at its last run (for `plan` reasons)
//! tmp/                     work directories and temp files; never read as results
//! locks/writer, readers/    the cache lock: lock files, safe on NFS (see `lock`)
//! locks/stages/<key>       held while a stage with that key is computed
//! jobs/<run>/              stage specs and results of a batch-scheduler run (see `exec::job`)
//! ```
//!
//! Every write is temp file → fsync → rename → fsync(dir), so a crash at any point leaves either
//! the old state or the new one; a manifest is written only after all its objects are in place.
//!
//! Integrity: a hit is proven, not assumed.
//! - An object is hashed when it is committed (its name is that digest), and checked against its
//!   digest when a lookup first reads it: through the digest memo, so an object whose size,
//!   mtime, ctime or inode changed since it was last hashed is hashed again. A manifest with a
//!   missing or damaged object is a miss, and the recomputation replaces the object (a commit
//!   never keeps a damaged copy because one exists).
//! - Damage that leaves the file's metadata alone (bit rot on the disk) is what `verify` finds:
//!   it rehashes every object, removes damaged objects, the results naming them, and every result
//!   computed from those (transitively, through the input digests in their keys).
//! - The next local run (it holds the lock exclusively) removes what crashed runs left in `tmp/`.

mod digest;
pub mod lock;
pub mod remote;

pub use digest::{hash_file, hash_file_plain};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file in the object store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRef {
    pub digest: String,
    pub size: u64,
}

/// Where and on what a result was computed.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Provenance {
    pub edge_eval_version: String,
    pub host: String,
    pub hardware: String,
    pub pipeline: String,
}

/// The action-cache entry of one stage result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub kind: String,
    /// Stage id in the run that computed it (ids are not part of the key).
    pub stage_id: String,
    /// The key's inputs, as hashed (see `plan::KeyComponents`).
    pub components: serde_json::Value,
    pub files: BTreeMap<String, ObjectRef>,
    pub record: serde_json::Value,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    pub output_digest: String,
    /// Microseconds since the Unix epoch.
    pub started_us: i64,
    pub finished_us: i64,
    pub seconds: f64,
    pub provenance: Provenance,
}

impl Manifest {
    /// The manifest in `bytes`, read as the result of `key`: it must hold that key and name its
    /// objects and output by blake3 digests (64 lowercase hex digits), so that nothing a manifest
    /// says — it may come from a shared remote tier — can point outside the object store. The
    /// error says what is wrong, for "manifest X …".
    pub fn parse(key: &str, bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("is damaged: {e}"))?;
        if m.key != key {
            return Err("holds another key".into());
        }
        if !is_digest(&m.output_digest) {
            return Err("has an output digest that is not a blake3 digest".into());
        }
        if let Some((name, _)) = m.files.iter().find(|(_, o)| !is_digest(&o.digest)) {
            return Err(format!(
                "names its output `{name}` by something that is not a blake3 digest"
            ));
        }
        Ok(m)
    }
}

/// Whether `s` is a blake3 digest as this cache writes them: 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Manifest>),
    Miss,
    /// An entry exists but cannot be used (unreadable, or an object is missing/damaged).
    Broken(String),
}

#[derive(Clone)]
pub struct Cache {
    root: PathBuf,
    /// A shared tier behind this one (`--remote-cache`): misses are looked up there, commits
    /// pushed there.
    remote: Option<std::sync::Arc<remote::Remote>>,
}

pub use lock::CacheLock;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn shard(dir: &Path, name: &str) -> PathBuf {
    dir.join(name.get(..2).unwrap_or(name)).join(name)
}

/// The remote tier's path of `name` under `dir` (`objects`, `actions`): the local layout.
fn rel(dir: &str, name: &str) -> String {
    shard(Path::new(dir), name).to_string_lossy().into_owned()
}

impl Cache {
    /// The cache at `dir`, with the remote tier at `remote` (a URL) behind it.
    pub fn open_with_remote(dir: &Path, remote: Option<&str>) -> Result<Cache> {
        let cache = Cache::open(dir)?;
        Ok(match remote {
            Some(url) => cache.with_remote(remote::Remote::open(url)?),
            None => cache,
        })
    }

    /// Opens (creating if needed) a cache directory.
    pub fn open(root: &Path) -> Result<Cache> {
        for sub in ["objects", "actions", "digests", "history", "tmp"] {
            fs::create_dir_all(root.join(sub)).with_context(|| {
                format!("cannot create cache folder {}", root.join(sub).display())
            })?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            remote: None,
        })
    }

    /// Puts a shared remote tier behind this cache.
    pub fn with_remote(mut self, remote: remote::Remote) -> Cache {
        self.remote = Some(std::sync::Arc::new(remote));
        self
    }

    pub fn remote_url(&self) -> Option<&str> {
        self.remote.as_deref().map(remote::Remote::url)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the cache lock (shared: readers and runs that share the cache with others;
    /// exclusive: a local run, `verify`, `gc`), waiting with a message while it is taken.
    pub fn lock(&self, exclusive: bool) -> Result<CacheLock> {
        lock::lock_cache(&self.root, exclusive)
    }

    /// Removes every entry of `tmp/`: what crashed runs left there. Call only while holding the
    /// lock exclusively (nothing else is using `tmp/` then). Returns how many entries went.
    pub fn reclaim_tmp(&self) -> usize {
        let mut n = 0;
        for e in fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            n += 1;
            let p = e.path();
            make_writable_tree(&p);
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
        n
    }

    /// Held while the stage with this key is computed, so that two runs sharing the cache (on
    /// one host or several) never compute the same result at once: the second waits, then finds
    /// the first one's result.
    pub fn lock_stage(
        &self,
        key: &str,
        waiting: impl FnMut(&lock::Owner),
    ) -> Result<lock::LockFile> {
        let dir = self.root.join("locks").join("stages");
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create lock folder {}", dir.display()))?;
        lock::LockFile::acquire(&dir.join(key), waiting)
    }

    pub fn object_path(&self, digest: &str) -> PathBuf {
        shard(&self.root.join("objects"), digest)
    }

    fn action_path(&self, key: &str) -> PathBuf {
        shard(&self.root.join("actions"), &format!("{key}.json"))
    }

    /// A fresh private folder under `tmp/` for a stage to work in.
    pub fn work_dir(&self) -> Result<PathBuf> {
        // Unique across the hosts that share the cache, not just in this process.
        let dir = self
            .root
            .join("tmp")
            .join(format!("work-{}", unique_suffix()));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A stage's resume folder: kept when an attempt fails or is interrupted, so the next attempt
    /// with the same key continues from its partial progress; `gc` does not touch it.
    pub fn resume_dir(&self, key: &str) -> Result<PathBuf> {
        let dir = self.root.join("partial").join(key);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The manifest of `key` if it and every object it names are here — or, with a remote tier,
    /// can be pulled from there.
    pub fn lookup(&self, key: &str) -> Lookup {
        let local = self.lookup_local(key);
        match (&local, &self.remote) {
            (Lookup::Hit(_), _) | (_, None) => local,
            (_, Some(remote)) => match self.pull(remote, key) {
                Ok(true) => self.lookup_local(key),
                Ok(false) => local,
                Err(e) => {
                    eprintln!("warning: {e:#}; computing it here instead");
                    local
                }
            },
        }
    }

    /// Copies the remote entry of `key` (objects first, each checked against its digest, then
    /// the manifest) into this cache; false when the remote has no such entry.
    fn pull(&self, remote: &remote::Remote, key: &str) -> Result<bool> {
        let Some(text) = remote.get_bytes(&rel("actions", &format!("{key}.json")))? else {
            return Ok(false);
        };
        let m = Manifest::parse(key, &text)
            .map_err(|why| anyhow::anyhow!("the remote manifest of {key} {why}"))?;
        for (name, obj) in &m.files {
            if self.check_object(obj).is_ok() {
                continue;
            }
            let tmp = self.temp_path();
            let got = remote.get_file(&rel("objects", &obj.digest), &tmp);
            let ok = matches!(&got, Ok(Some(d)) if *d == obj.digest);
            if !ok {
                let _ = fs::remove_file(&tmp);
                let why = match got {
                    Ok(Some(_)) => {
                        // Damaged in the store: remove it, so the push of this result replaces it.
                        let _ = remote.delete(&rel("objects", &obj.digest));
                        "its content does not match its digest".to_string()
                    }
                    Ok(None) => "it is missing".to_string(),
                    Err(e) => format!("{e:#}"),
                };
                bail!("the remote result {key} is unusable: object `{name}`: {why}");
            }
            self.put_file(&tmp)?;
        }
        self.put_manifest_local(&m)?;
        Ok(true)
    }

    /// Pushes a committed result to the remote tier: objects it lacks, then the manifest.
    fn push(&self, remote: &remote::Remote, m: &Manifest) -> Result<()> {
        for obj in m.files.values() {
            let target = rel("objects", &obj.digest);
            if !remote.exists(&target)? {
                remote.put_file(&target, &self.object_path(&obj.digest))?;
            }
        }
        remote.put_bytes(
            &rel("actions", &format!("{}.json", m.key)),
            serde_json::to_vec_pretty(m)?,
        )
    }

    fn lookup_local(&self, key: &str) -> Lookup {
        let path = self.action_path(key);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Broken(format!("cannot read {}: {e}", path.display())),
        };
        let m = match Manifest::parse(key, &text) {
            Ok(m) => m,
            Err(why) => return Lookup::Broken(format!("manifest {} {why}", path.display())),
        };
        for (name, obj) in &m.files {
            if let Err(why) = self.check_object(obj) {
                return Lookup::Broken(format!("object for `{name}` {why}"));
            }
        }
        Lookup::Hit(Box::new(m))
    }

    /// Whether the object is there with its size and content (its digest, through the memo:
    /// rehashed when the file's metadata changed since it was last hashed).
    fn check_object(&self, obj: &ObjectRef) -> std::result::Result<(), String> {
        let path = self.object_path(&obj.digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.len() != obj.size => return Err("has the wrong size".into()),
            Ok(_) => {}
            Err(_) => return Err("is missing".into()),
        }
        match self.digest_file(&path) {
            Ok(d) if d == obj.digest => Ok(()),
            Ok(_) => Err("is damaged (its content no longer matches its digest)".into()),
            Err(e) => Err(format!("cannot be read: {e:#}")),
        }
    }

    /// Moves a finished file into the object store; returns its reference. An object already
    /// stored under the digest is kept only when it is intact; a damaged one is replaced.
    pub fn put_file(&self, path: &Path) -> Result<ObjectRef> {
        let digest = hash_file(path)?;
        let size = fs::metadata(path)?.len();
        let dest = self.object_path(&digest);
        let object = ObjectRef {
            digest: digest.clone(),
            size,
        };
        if dest.exists() && self.check_object(&object).is_ok() {
            let _ = fs::remove_file(path);
        } else {
            if dest.exists() {
                remove_readonly(&dest);
            }
            fs::create_dir_all(dest.parent().expect("sharded"))?;
            File::open(path)?.sync_all()?;
            let mut perms = fs::metadata(path)?.permissions();
            perms.set_readonly(true);
            fs::set_permissions(path, perms)?;
            if fs::rename(path, &dest).is_err() {
                // Different filesystem: copy through a temp file, then rename.
                let tmp = self.temp_path();
                fs::copy(path, &tmp)?;
                File::open(&tmp)?.sync_all()?;
                fs::rename(&tmp, &dest)?;
            }
            sync_dir(dest.parent().expect("sharded"));
        }
        Ok(object)
    }

    /// Records a finished stage (and pushes it to the remote tier, if any). Call only after
    /// every object it names is stored. A failed push is a warning: the result is kept here.
    pub fn put_manifest(&self, m: &Manifest) -> Result<()> {
        self.put_manifest_local(m)?;
        if let Some(remote) = &self.remote
            && let Err(e) = self.push(remote, m)
        {
            eprintln!(
                "warning: the result of `{}` stays in the local cache only: {e:#}",
                m.stage_id
            );
        }
        Ok(())
    }

    fn put_manifest_local(&self, m: &Manifest) -> Result<()> {
        let path = self.action_path(&m.key);
        fs::create_dir_all(path.parent().expect("sharded"))?;
        self.write_atomic(&path, &serde_json::to_vec_pretty(m)?)
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("tmp-{}", unique_suffix()))
    }

    /// temp file in the cache → fsync → rename over `path` → fsync the folder.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        write_atomic_via(&self.temp_path(), path, bytes)
    }

    // ------------------------------------------------------------------ digests

    /// Content digest of a file, memoised by (path, size, mtime, ctime, inode, device). A folder
    /// is not accepted: callers list the files they mean.
    pub fn digest_file(&self, path: &Path) -> Result<String> {
        digest::memoised(self, path)
    }

    // ------------------------------------------------------------------ history

    fn history_path(&self, pipeline: &str) -> PathBuf {
        let safe: String = pipeline
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("history").join(format!("{safe}.json"))
    }

    /// Key components per stage id at their last run of this pipeline.
    pub fn history(&self, pipeline: &str) -> BTreeMap<String, serde_json::Value> {
        fs::read(self.history_path(pipeline))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_history(
        &self,
        pipeline: &str,
        h: &BTreeMap<String, serde_json::Value>,
    ) -> Result<()> {
        self.write_atomic(&self.history_path(pipeline), &serde_json::to_vec(h)?)
    }

    // ------------------------------------------------------------------ maintenance

    fn manifest_paths(&self) -> Vec<PathBuf> {
        walk_files(&self.root.join("actions"))
    }

    /// All readable manifests (unreadable ones are skipped; `verify` reports them).
    pub fn manifests(&self) -> Vec<Manifest> {
        self.manifest_paths()
            .iter()
            .filter_map(|p| read_manifest(p).ok())
            .collect()
    }

    /// Rehashes every object and checks every manifest. Damaged objects and the manifests that
    /// can no longer be satisfied are removed (so they are misses next time) and reported.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut good = HashSet::new();
        for path in walk_files(&self.root.join("objects")) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            report.objects += 1;
            match hash_file(&path) {
                Ok(d) if d == name => {
                    good.insert(name);
                }
                Ok(d) => {
                    report.problems.push(format!(
                        "object {name} is damaged (its content hashes to {d}); removed"
                    ));
                    remove_readonly(&path);
                }
                Err(e) => report
                    .problems
                    .push(format!("object {name} cannot be read: {e}")),
            }
        }
        // Output digests of removed results, and the results kept so far.
        let mut tainted: HashSet<String> = HashSet::new();
        let mut intact: Vec<(PathBuf, Manifest)> = vec![];
        for path in self.manifest_paths() {
            report.manifests += 1;
            let stem = path
                .file_stem()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let m = read_manifest(&path);
            let problem = match &m {
                Err(why) => Some(why.clone()),
                Ok(m) => m
                    .files
                    .iter()
                    .find(|(_, o)| !good.contains(&o.digest))
                    .map(|(n, _)| format!("its output `{n}` is missing or damaged")),
            };
            if let Some(p) = problem {
                let what = m
                    .as_ref()
                    .map(|m| format!("{} ({})", m.stage_id, m.kind))
                    .unwrap_or_default();
                report.problems.push(format!(
                    "entry {stem} {what}: {p}; removed, it will be recomputed"
                ));
                let _ = fs::remove_file(&path);
                // Only a result whose own outputs are damaged taints what was computed from it (a
                // manifest filed under another key says nothing about that key's output).
                if let Ok(m) = m {
                    tainted.insert(m.output_digest);
                }
            } else if let Ok(m) = m {
                intact.push((path, m));
            }
        }
        // What was computed from a removed result's output may have read the damaged bytes:
        // it goes too, and so does what was computed from it.
        loop {
            let (poisoned, kept): (Vec<_>, Vec<_>) = intact
                .into_iter()
                .partition(|(_, m)| consumes_any(&m.components, &tainted));
            intact = kept;
            if poisoned.is_empty() {
                break;
            }
            for (path, m) in poisoned {
                report.problems.push(format!(
                    "entry {} {} ({}): computed from a removed result's output; removed, it \
                     will be recomputed",
                    m.key, m.stage_id, m.kind
                ));
                let _ = fs::remove_file(&path);
                tainted.insert(m.output_digest);
            }
        }
        Ok(report)
    }

    /// Removes objects no manifest references, stale temp files and memo entries of files that
    /// no longer exist. Needs the exclusive lock.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let referenced: HashSet<String> = self
            .manifests()
            .into_iter()
            .flat_map(|m| m.files.into_values().map(|o| o.digest))
            .collect();
        for path in walk_files(&self.root.join("objects")) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if !referenced.contains(&name) {
                report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                report.objects += 1;
                remove_readonly(&path);
            }
        }
        report.temp = self.reclaim_tmp();
        report.memo = digest::prune(self);
        report.job_runs = self.prune_finished_jobs();
        Ok(report)
    }

    /// Removes the `jobs/<run>` folders of batch runs whose every job left a result (their
    /// results are in the cache; the folder only held specs and logs). Returns how many.
    fn prune_finished_jobs(&self) -> usize {
        let Ok(runs) = fs::read_dir(self.root.join("jobs")) else {
            return 0;
        };
        let mut removed = 0;
        for run in runs.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let files: HashSet<String> = fs::read_dir(&run)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            let finished = files
                .iter()
                .filter_map(|f| f.strip_suffix(".spec.json"))
                .all(|job| files.contains(&format!("{job}.result.json")));
            if finished && fs::remove_dir_all(&run).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub objects: usize,
    pub manifests: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub objects: usize,
    pub bytes: u64,
    pub temp: usize,
    pub memo: usize,
    /// Finished batch runs whose job folders were removed.
    pub job_runs: usize,
}

/// This host's name (as `hostname` prints it).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A suffix no other process (on any host sharing the cache) picks at the same time.
pub fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}-{}-{}-{n}", hostname(), std::process::id(), now_us());
    blake3::hash(seed.as_bytes()).to_hex()[..16].to_string()
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Whether key components name any of `digests` as an input (`{"digest": …}` in their
/// parameters, as `plan::key_components` writes node references).
fn consumes_any(components: &serde_json::Value, digests: &HashSet<String>) -> bool {
    match components {
        serde_json::Value::Object(o) => {
            o.get("digest")
                .and_then(|d| d.as_str())
                .is_some_and(|d| digests.contains(d))
                || o.values().any(|v| consumes_any(v, digests))
        }
        serde_json::Value::Array(a) => a.iter().any(|v| consumes_any(v, digests)),
        _ => false,
    }
}

/// Writes `bytes` to `tmp`, fsyncs, renames onto `path` and fsyncs the folder.
pub fn write_atomic_via(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    {
        let mut f =
            File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The manifest stored at `path` (`actions/ab/<key>.json`), checked as [`Manifest::parse`] does.
fn read_manifest(path: &Path) -> std::result::Result<Manifest, String> {
    let key = path
        .file_stem()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let bytes = fs::read(path).map_err(|e| format!("is unreadable: {e}"))?;
    Manifest::parse(&key, &bytes)
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => out.push(p),
                    _ => {}
                }
            }
        }
    }
    out.sort();
    out
}

/// Removes a folder tree (best effort), read-only files included.
pub fn remove_tree(path: &Path) {
    make_writable_tree(path);
    let _ = fs::remove_dir_all(path);
}

fn remove_readonly(path: &Path) {
    make_writable_tree(path);
    let _ = fs::remove_file(path);
}

#[allow(clippy::permissions_set_readonly_false)]
fn make_writable_tree(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mut perms = meta.permissions();
        perms.set_readonly(false);
        let _ = fs::set_permissions(path, perms);
        if meta.is_dir() {
            for f in walk_files(path) {
                make_writable_tree(&f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn manifest(object_digest: &str) -> Manifest {
        Manifest {
            key: KEY.into(),
            kind: "quantize".into(),
            stage_id: "q".into(),
            components: serde_json::json!({}),
            files: BTreeMap::from([(
                "model".to_string(),
                ObjectRef {
                    digest: object_digest.into(),
                    size: 4,
                },
            )]),
            record: serde_json::json!({}),
            rows: vec![],
            output_digest: KEY.into(),
            started_us: 0,
            finished_us: 0,
            seconds: 0.0,
            provenance: Provenance::default(),
        }
    }

    #[test]
    fn a_manifest_that_names_a_path_instead_of_a_digest_is_never_a_hit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        // A file outside the object store with the content the manifest promises.
        std::fs::write(dir.path().join("outside"), b"data").unwrap();
        for digest in ["../../outside", "aé", "", &KEY.to_uppercase()] {
            cache.put_manifest(&manifest(digest)).unwrap();
            match cache.lookup(KEY) {
                Lookup::Broken(why) => assert!(why.contains("not a blake3 digest"), "{why}"),
                other => panic!("{digest:?}: {other:?}"),
            }
        }
        let good = manifest(&"ab".repeat(32));
        let bytes = serde_json::to_vec(&good).unwrap();
        assert!(Manifest::parse(KEY, &bytes).is_ok());
        assert_eq!(
            Manifest::parse(&"cd".repeat(32), &bytes).unwrap_err(),
            "holds another key"
        );
    }
}
