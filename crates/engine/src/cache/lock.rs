//! Locks that work on a cache directory several hosts mount over NFS.
//!
//! `flock` is not used: on NFS it is emulated (or missing), and a lock held by a crashed host is
//! never released. Instead a lock is a file created with `O_CREAT | O_EXCL` (atomic on NFSv3 and
//! later) holding its owner (`host`, `pid`, a random nonce, and the Slurm job when there is one).
//! While held, a heartbeat thread touches the file every [`HEARTBEAT`]. A waiter breaks a lock
//! whose owner is provably gone: same host and the pid no longer exists, or the file's mtime has
//! not moved for [`STALE_AFTER`] as timed by the waiter's own clock (so clock skew between hosts
//! does not matter). Breaking renames the file to a unique name first (only one breaker wins the
//! rename), then checks that what it took away is the stale owner it judged, and puts back a lock
//! that turned out to be fresh (with `link`, which never overwrites).
//!
//! The cache lock is a readers–writer lock built from these: a reader holds a file of its own in
//! `locks/readers/`; a writer holds `locks/writer` and then waits until every live reader has
//! gone. A reader that finds a writer gives way (removes its file) and waits.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How often a held lock's file is touched.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The heartbeat's period ([`HEARTBEAT`]; short in unit tests).
fn heartbeat_period() -> Duration {
    if cfg!(test) {
        Duration::from_millis(50)
    } else {
        HEARTBEAT
    }
}

/// How long a lock file's mtime must stand still before a waiter on another host breaks it.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Who holds a lock (the lock file's content).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    pub nonce: String,
    /// `SLURM_JOB_ID`, when the holder runs inside a Slurm job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub since_us: i64,
}

impl Owner {
    fn me() -> Owner {
        Owner {
            host: super::hostname(),
            pid: std::process::id(),
            nonce: super::unique_suffix(),
            job: std::env::var("SLURM_JOB_ID").ok(),
            since_us: super::now_us(),
        }
    }

    pub fn describe(&self) -> String {
        let job = self
            .job
            .as_ref()
            .map(|j| format!(", Slurm job {j}"))
            .unwrap_or_default();
        format!("pid {} on {}{job}", self.pid, self.host)
    }

    /// Known dead: on this host, and no process has its pid.
    fn dead_here(&self) -> bool {
        if self.host != super::hostname() {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

/// A held lock file; removed on drop. A process that dies leaves it behind, to be broken by the
/// next waiter (at once on the same host, after [`STALE_AFTER`] elsewhere).
pub struct LockFile {
    path: PathBuf,
    owner: Owner,
    /// Dropped to stop the heartbeat thread (which wakes at once).
    stop: Option<std::sync::mpsc::Sender<()>>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

impl LockFile {
    /// Creates the lock file if nobody holds it; `Ok(None)` while a live owner does (a stale
    /// one is broken first).
    pub fn try_acquire(path: &Path, watch: &mut Watch) -> Result<Option<LockFile>> {
        let owner = Owner::me();
        match create_exclusive(path, &owner) {
            Ok(()) => Ok(Some(LockFile::held(path, owner))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                watch.break_if_stale(path)?;
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("cannot create lock file {}", path.display())),
        }
    }

    /// Waits until the lock is ours; `waiting` is called once, with the holder, if it is busy.
    pub fn acquire(path: &Path, mut waiting: impl FnMut(&Owner)) -> Result<LockFile> {
        let mut watch = Watch::default();
        let mut told = false;
        loop {
            if let Some(l) = LockFile::try_acquire(path, &mut watch)? {
                return Ok(l);
            }
            if !told && let Some(o) = read_owner(path) {
                waiting(&o);
                told = true;
            }
            std::thread::sleep(poll_interval());
        }
    }

    fn held(path: &Path, owner: Owner) -> LockFile {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let heartbeat = {
            let (path, me) = (path.to_path_buf(), owner.clone());
            std::thread::Builder::new()
                .name("lock-heartbeat".into())
                .spawn(move || {
                    // Until the holder drops its end of the channel.
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(heartbeat_period())
                    {
                        match read_owner(&path) {
                            // Touch only our own lock: if it was broken (we were presumed dead)
                            // the file now belongs to someone else.
                            Some(o) if o.nonce == me.nonce => touch(&path),
                            Some(_) => {}
                            None if !path.exists() => recreate(&path, &me),
                            None => {} // being written by a breaker: looked at again next beat
                        }
                    }
                })
                .ok()
        };
        LockFile {
            path: path.to_path_buf(),
            owner,
            stop: Some(stop),
            heartbeat,
        }
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if read_owner(&self.path).is_some_and(|o| o.nonce == self.owner.nonce) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What a waiter has seen of a lock file: its owner and mtime, and since when (waiter's clock)
/// that mtime has stood still.
#[derive(Default)]
pub struct Watch {
    seen: Option<(String, SystemTime, Instant)>,
}

impl Watch {
    /// Breaks the lock at `path` when its owner is gone; true if it did.
    fn break_if_stale(&mut self, path: &Path) -> Result<bool> {
        let mtime = fs::metadata(path).and_then(|m| m.modified());
        let (Some(owner), Ok(mtime)) = (read_owner(path), &mtime) else {
            self.seen = None;
            // An unreadable lock file that nobody has touched for STALE_AFTER was left by a
            // creator killed half-way (before locks were written atomically): nobody holds it.
            let abandoned = mtime
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_AFTER);
            if abandoned && read_owner(path).is_none() {
                let aside = path.with_extension(format!("stale-{}", super::unique_suffix()));
                if fs::rename(path, &aside).is_ok() {
                    // Another waiter may have removed the empty file first and a new holder
                    // created a lock since: what was moved aside must still be the empty one.
                    if read_owner(&aside).is_none() {
                        let _ = fs::remove_file(&aside);
                        eprintln!("note: removed the abandoned, empty lock {}", path.display());
                        return Ok(true);
                    }
                    let _ = fs::hard_link(&aside, path);
                    let _ = fs::remove_file(&aside);
                }
            }
            // Gone meanwhile: look again next time.
            return Ok(false);
        };
        let mtime = *mtime;
        let still = match &self.seen {
            Some((nonce, t, since)) if *nonce == owner.nonce && *t == mtime => since.elapsed(),
            _ => {
                self.seen = Some((owner.nonce.clone(), mtime, Instant::now()));
                Duration::ZERO
            }
        };
        if !(owner.dead_here() || still >= STALE_AFTER) {
            return Ok(false);
        }
        self.seen = None;
        let aside = path.with_extension(format!("stale-{}", super::unique_suffix()));
        if fs::rename(path, &aside).is_err() {
            return Ok(false); // another waiter broke it first
        }
        if read_owner(&aside).is_some_and(|o| o.nonce == owner.nonce) {
            let _ = fs::remove_file(&aside);
            eprintln!(
                "note: broke the stale lock {} (held by {}, which is gone)",
                path.display(),
                owner.describe()
            );
            return Ok(true);
        }
        // We took away a lock created after our judgement: give it back unless a new one exists.
        let _ = fs::hard_link(&aside, path);
        let _ = fs::remove_file(&aside);
        Ok(false)
    }
}

/// The cache's readers–writer lock (see the module comment).
pub enum CacheLock {
    Reader(LockFile),
    Writer(LockFile),
}

pub fn lock_cache(root: &Path, exclusive: bool) -> Result<CacheLock> {
    let dir = root.join("locks");
    let readers = dir.join("readers");
    fs::create_dir_all(&readers)
        .with_context(|| format!("cannot create lock folder {}", readers.display()))?;
    let writer_path = dir.join("writer");
    let mut told = false;
    let mut tell = |o: &Owner| {
        if !told {
            eprintln!(
                "waiting for another edge-eval process using the cache {} ({}) …",
                root.display(),
                o.describe()
            );
            told = true;
        }
    };
    if exclusive {
        let writer = LockFile::acquire(&writer_path, &mut tell)?;
        let mut watches: std::collections::HashMap<PathBuf, Watch> = Default::default();
        loop {
            let live: Vec<PathBuf> = list(&readers);
            if live.is_empty() {
                return Ok(CacheLock::Writer(writer));
            }
            for r in &live {
                let w = watches.entry(r.clone()).or_default();
                w.break_if_stale(r)?;
                if let Some(o) = read_owner(r) {
                    tell(&o);
                }
            }
            std::thread::sleep(poll_interval());
        }
    }
    let mut watch = Watch::default();
    loop {
        let mine = readers.join(format!("{}.{}", super::hostname(), super::unique_suffix()));
        let owner = Owner::me();
        create_exclusive(&mine, &owner)
            .with_context(|| format!("cannot create lock file {}", mine.display()))?;
        if !writer_path.exists() {
            return Ok(CacheLock::Reader(LockFile::held(&mine, owner)));
        }
        // A writer holds or wants the cache: give way.
        let _ = fs::remove_file(&mine);
        if let Some(o) = read_owner(&writer_path) {
            tell(&o);
        }
        watch.break_if_stale(&writer_path)?;
        std::thread::sleep(poll_interval());
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !name.contains(".stale-") && !name.contains(".new-")
        })
        .collect()
}

/// Creates the lock file holding `owner`, atomically: the owner is written to a private file
/// first and then hard-linked to `path` (`link` never overwrites, and is atomic on NFS too), so a
/// lock file never exists without its owner — a process killed between creating and writing it
/// used to leave an empty lock no one could judge (found by `benches/crash_campaign.sh`).
fn create_exclusive(path: &Path, owner: &Owner) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!("{name}.new-{}", super::unique_suffix()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let text = serde_json::to_string(owner).expect("owner serializes");
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    linked
}

/// A held lock's file was removed (someone deleted `locks/`, or the whole folder): put it back,
/// so that a second run waits again; if another process took it meanwhile, say so loudly — both
/// now believe they hold it.
fn recreate(path: &Path, me: &Owner) {
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    match create_exclusive(path, me) {
        Ok(()) => eprintln!(
            "warning: the lock file {} was removed while held; it is back (do not delete \
             `locks/` while edge-eval runs)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => eprintln!(
            "error: the lock file {} was removed while held and is now held by {}: a stage may \
             be computed twice, or a measurement overlap another",
            path.display(),
            read_owner(path).map_or("another process".into(), |o| o.describe())
        ),
        Err(e) => eprintln!(
            "warning: the lock file {} was removed while held and cannot be put back: {e}",
            path.display()
        ),
    }
}

pub fn read_owner(path: &Path) -> Option<Owner> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn touch(path: &Path) {
    if let Ok(f) = fs::OpenOptions::new().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn poll_interval() -> Duration {
    Duration::from_millis(50)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_removed_lock_file_is_put_back_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/stages/k");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let held = LockFile::acquire(&path, |_| {}).unwrap();
        fs::remove_dir_all(dir.path().join("locks")).unwrap();
        let t0 = Instant::now();
        while read_owner(&path).as_ref() != Some(held.owner()) {
            assert!(t0.elapsed() < Duration::from_secs(5), "not re-created");
            std::thread::sleep(Duration::from_millis(10));
        }
        // So a second taker waits again, and the file goes when the holder lets go.
        assert!(
            LockFile::try_acquire(&path, &mut Watch::default())
                .unwrap()
                .is_none()
        );
        drop(held);
        assert!(!path.exists());
    }

    #[test]
    fn an_abandoned_empty_lock_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let f = fs::File::create(&path).unwrap();
        f.set_modified(SystemTime::now() - STALE_AFTER - Duration::from_secs(1))
            .unwrap();
        let t0 = Instant::now();
        let held = LockFile::acquire(&path, |_| {}).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(read_owner(&path).as_ref(), Some(held.owner()));
        // A fresh empty file (its creator may be writing it) is left alone.
        drop(held);
        fs::File::create(&path).unwrap();
        assert!(!Watch::default().break_if_stale(&path).unwrap());
    }

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let mut w = Watch::default();
        let a = LockFile::try_acquire(&p, &mut w).unwrap().expect("free");
        assert!(LockFile::try_acquire(&p, &mut w).unwrap().is_none());
        assert_eq!(read_owner(&p).unwrap().pid, std::process::id());
        drop(a);
        assert!(!p.exists());
        assert!(LockFile::try_acquire(&p, &mut w).unwrap().is_some());
    }

    #[test]
    fn a_dead_owner_on_this_host_is_broken_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        // A process that has exited: its pid no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let ghost = Owner { pid, ..Owner::me() };
        create_exclusive(&p, &ghost).unwrap();
        let mut w = Watch::default();
        assert!(LockFile::try_acquire(&p, &mut w).unwrap().is_none()); // breaks it
        let l = LockFile::try_acquire(&p, &mut w).unwrap().expect("broken");
        assert_eq!(l.owner().pid, std::process::id());
    }

    #[test]
    fn a_remote_owner_is_broken_only_when_its_heartbeat_stops() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let remote = Owner {
            host: "another-host".into(),
            ..Owner::me()
        };
        create_exclusive(&p, &remote).unwrap();
        let mut w = Watch::default();
        // Seen for the first time: not stale, however old the file.
        assert!(!w.break_if_stale(&p).unwrap());
        // Its mtime moves (a heartbeat): the clock starts again.
        std::thread::sleep(Duration::from_millis(20));
        touch(&p);
        assert!(!w.break_if_stale(&p).unwrap());
        assert!(p.exists());
        // Standing still for STALE_AFTER (shortened) breaks it.
        w.seen = w
            .seen
            .take()
            .map(|(n, t, _)| (n, t, Instant::now() - STALE_AFTER));
        assert!(w.break_if_stale(&p).unwrap());
        assert!(!p.exists());
    }

    #[test]
    fn a_writer_waits_for_readers_and_readers_give_way_to_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let reader = lock_cache(&root, false).unwrap();
        let second_reader = lock_cache(&root, false).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (root, done) = (root.clone(), done.clone());
            std::thread::spawn(move || {
                let w = lock_cache(&root, true).unwrap();
                done.store(true, Ordering::SeqCst);
                // While the writer holds it, a reader waits.
                std::thread::sleep(Duration::from_millis(200));
                drop(w);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!done.load(Ordering::SeqCst), "writer got in past readers");
        drop(reader);
        drop(second_reader);
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let t0 = Instant::now();
        let _r = lock_cache(&root, false).unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "reader ignored the writer"
        );
        t.join().unwrap();
    }
}
