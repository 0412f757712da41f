//! `cache ls | verify | gc`.

use super::*;

pub(super) fn fmt_time(us: i64) -> String {
    runtime::chat::strftime("%Y-%m-%d %H:%M:%S UTC", (us.max(0) / 1_000_000) as u64)
}

pub(super) fn cache_cmd(dir: &Path, action: CacheAction) -> Result<i32> {
    let cache = Cache::open(dir)?;
    match action {
        CacheAction::Ls { json } => {
            let _lock = cache.lock(false)?;
            let mut ms = cache.manifests();
            ms.sort_by(|a, b| {
                (&a.provenance.pipeline, &a.stage_id).cmp(&(&b.provenance.pipeline, &b.stage_id))
            });
            if json {
                let rows: Vec<_> = ms
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "key": m.key,
                            "kind": m.kind,
                            "pipeline": m.provenance.pipeline,
                            "stage_id": m.stage_id,
                            "bytes": m.files.values().map(|o| o.size).sum::<u64>(),
                            "started": fmt_time(m.started_us),
                            "seconds": m.seconds,
                            "host": m.provenance.host,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(0);
            }
            let mut total = 0u64;
            for m in &ms {
                let bytes: u64 = m.files.values().map(|o| o.size).sum();
                total += bytes;
                println!(
                    "{}  {:<12} {:<40} {:>10}  {}",
                    &m.key[..16],
                    m.kind,
                    format!("{}/{}", m.provenance.pipeline, m.stage_id),
                    human_bytes(bytes),
                    fmt_time(m.started_us)
                );
            }
            println!(
                "{} results, {} of outputs, in {}",
                ms.len(),
                human_bytes(total),
                dir.display()
            );
            Ok(0)
        }
        CacheAction::Verify => {
            let _lock = cache.lock(true)?;
            let r = cache.verify()?;
            for p in &r.problems {
                println!("damaged: {p}");
            }
            println!(
                "verified {} objects and {} results: {} problem{}",
                r.objects,
                r.manifests,
                r.problems.len(),
                if r.problems.len() == 1 { "" } else { "s" }
            );
            Ok(if r.problems.is_empty() { 0 } else { 1 })
        }
        CacheAction::Gc => {
            let _lock = cache.lock(true)?;
            let r = cache.gc()?;
            println!(
                "removed {} unreferenced objects ({}), {} temporary entries, {} stale digest memos, \
                 {} finished batch-run job folders",
                r.objects,
                human_bytes(r.bytes),
                r.temp,
                r.memo,
                r.job_runs
            );
            Ok(0)
        }
    }
}

pub(super) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
