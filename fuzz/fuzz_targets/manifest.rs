//! The cache's manifest reader on arbitrary bytes (a manifest may come from a shared remote
//! tier): every input is a manifest that names only digests, writes back to what it read, and
//! is a hit only when its objects are there — or an error saying what is wrong. Never a panic.
#![no_main]

use engine::cache::{Cache, Lookup, Manifest, is_digest};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// The key the seeds are filed under (fuzz/seeds/manifest).
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A cache on tmpfs (its writes are fsynced), empty of objects: a manifest naming any object
/// must be a miss there.
static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!("edge-eval-fuzz-cache-{}", std::process::id()));
    Cache::open(&root).expect("a cache in a temp folder")
});

fuzz_target!(|data: &[u8]| {
    let m = match Manifest::parse(KEY, data) {
        Ok(m) => m,
        Err(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    assert!(is_digest(&m.output_digest));
    assert!(m.files.values().all(|o| is_digest(&o.digest)));
    // What the cache writes of it reads back as the same result.
    let bytes = serde_json::to_vec_pretty(&m).expect("a manifest serialises");
    let back = Manifest::parse(KEY, &bytes).expect("a written manifest reads back");
    assert_eq!(back.files, m.files);
    assert_eq!(back.output_digest, m.output_digest);
    assert_eq!(back.stage_id, m.stage_id);
    assert_eq!(back.rows.len(), m.rows.len());
    CACHE.put_manifest(&m).expect("the manifest is stored");
    match CACHE.lookup(KEY) {
        Lookup::Hit(_) => assert!(m.files.is_empty(), "a hit whose objects are absent"),
        Lookup::Broken(why) => assert!(!m.files.is_empty(), "broken: {why}"),
        Lookup::Miss => panic!("a stored manifest was not found"),
    }
});
