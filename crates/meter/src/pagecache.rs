//! The page cache state of model files: eviction (`posix_fadvise(DONTNEED)`) for cold loads and
//! a residency check (`mincore`) that tells whether eviction worked.

use anyhow::{Context, Result, bail};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Asks the kernel to drop `path`'s pages from the page cache (clean pages only; the file must
/// not be written concurrently).
pub fn evict(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!(
            "posix_fadvise(DONTNEED) on {} failed: error {rc}",
            path.display()
        );
    }
    Ok(())
}

/// Fraction (0–1) of `path`'s pages that are in the page cache now.
pub fn resident_fraction(path: &Path) -> Result<f64> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped before returning;
    // mincore only fills `vec` (one byte per page).
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            bail!("cannot map {}", path.display());
        }
        let page = libc::sysconf(libc::_SC_PAGESIZE).max(1) as usize;
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        if rc != 0 {
            bail!("mincore on {} failed", path.display());
        }
        Ok(vec.iter().filter(|b| *b & 1 == 1).count() as f64 / pages as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicted_files_leave_the_page_cache() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.bin");
        std::fs::write(&p, vec![7u8; 4 << 20]).unwrap();
        // Written pages are dirty until synced; only clean pages can be dropped.
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        let _ = std::fs::read(&p).unwrap();
        let warm = resident_fraction(&p).unwrap();
        evict(&p).unwrap();
        let cold = resident_fraction(&p).unwrap();
        // Memory-backed filesystems (tmpfs, overlay) cannot drop pages; there cold_load reports
        // the fraction that stayed. On a disk-backed one eviction must empty the cache.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(d.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the struct for a NUL-terminated path.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        const TMPFS: i64 = 0x0102_1994;
        const OVERLAYFS: i64 = 0x794c_7630;
        if matches!(st.f_type as i64, TMPFS | OVERLAYFS) {
            eprintln!(
                "skipping the eviction check: {} is memory-backed",
                d.path().display()
            );
            return;
        }
        assert!(warm > 0.5, "the file was just read: {warm}");
        assert!(cold < 0.1, "{warm} → {cold}");
    }
}
