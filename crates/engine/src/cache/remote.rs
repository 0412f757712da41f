//! A second cache tier that several hosts share, behind each host's local cache: an object
//! store (the `object_store` crate) holding the same layout as a local cache —
//! `objects/ab/<blake3>` and `actions/ab/<key>.json`.
//!
//! - A local miss asks the remote; a remote hit is pulled in (every object streamed to a temp
//!   file, its blake3 checked against its name, then renamed into `objects/`; the manifest last),
//!   so from then on it is an ordinary local hit. A damaged remote object is not used.
//! - A result committed locally is pushed: its objects (those the remote lacks), then its
//!   manifest, so a reader never sees a manifest whose objects are not there yet. A failed push
//!   is a warning: the result stays in the local cache and the run goes on.
//!
//! Backends: `file:///shared/folder` (any filesystem every host mounts; always built) and
//! `s3://bucket/prefix` (S3 or an S3-compatible server; needs the `s3` cargo feature; endpoint
//! and credentials from the usual `AWS_*` variables: `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true` for a plain-http endpoint).

use anyhow::{Context, Result};
use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    rt: tokio::runtime::Runtime,
}

/// Bytes read or written per chunk when streaming a file.
const CHUNK: usize = 8 << 20;

impl Remote {
    /// Opens `file:///…` or `s3://bucket/prefix`.
    pub fn open(url: &str) -> Result<Remote> {
        let (store, prefix): (Arc<dyn ObjectStore>, StorePath) =
            if let Some(dir) = url.strip_prefix("file://") {
                if !dir.starts_with('/') {
                    return Err(crate::InvalidInput(format!(
                        "remote cache `{url}`: a file URL needs an absolute path (file:///…)"
                    ))
                    .into());
                }
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the remote cache folder {dir}"))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .with_context(|| format!("remote cache `{url}`"))?;
                (Arc::new(fs), StorePath::default())
            } else if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(crate::InvalidInput(format!(
                        "remote cache `{url}`: no bucket (s3://BUCKET/PREFIX)"
                    ))
                    .into());
                }
                (s3(url, bucket)?, StorePath::from(prefix.trim_matches('/')))
            } else {
                return Err(crate::InvalidInput(format!(
                    "remote cache `{url}`: unsupported URL (use file:///shared/folder or \
                     s3://bucket/prefix)"
                ))
                .into());
            };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-cache")
            .enable_all()
            .build()
            .context("cannot start the remote cache's runtime")?;
        Ok(Remote {
            url: url.to_string(),
            store,
            prefix,
            rt,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> StorePath {
        rel.split('/')
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    /// Runs a future on the remote's runtime from any thread, including one inside another
    /// runtime (the executor's), by blocking a scoped helper thread instead.
    fn block<T: Send>(&self, f: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(f))
                .join()
                .expect("remote cache thread panicked")
        })
    }

    /// The bytes at `rel`, or `None` when the remote has nothing there.
    pub fn get_bytes(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(rel);
        self.block(async {
            match self.store.get(&path).await {
                Ok(r) => anyhow::Ok(Some(r.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .with_context(|| format!("cannot read {rel} from the remote cache {}", self.url))
    }

    pub fn exists(&self, rel: &str) -> Result<bool> {
        let path = self.path(rel);
        self.block(async {
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        })
        .with_context(|| format!("cannot look up {rel} in the remote cache {}", self.url))
    }

    /// Removes `rel` (a damaged object, so that the next push replaces it).
    pub fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        self.block(async { self.store.delete(&path).await })
            .with_context(|| format!("cannot delete {rel} from the remote cache {}", self.url))
    }

    pub fn put_bytes(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(rel);
        self.block(async { self.store.put(&path, PutPayload::from(bytes)).await })
            .with_context(|| format!("cannot write {rel} to the remote cache {}", self.url))?;
        Ok(())
    }

    /// Streams `file` to `rel` (multipart, so a model of many GB never sits in memory).
    pub fn put_file(&self, rel: &str, file: &Path) -> Result<()> {
        let path = self.path(rel);
        let mut f =
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        self.block(async {
            let upload = self.store.put_multipart(&path).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4).await?;
                w.write(&buf[..n]);
            }
            w.finish().await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("cannot upload {rel} to the remote cache {}", self.url))
    }

    /// Streams `rel` into `dest`, returning the blake3 of what was written (`None`: not there).
    pub fn get_file(&self, rel: &str, dest: &Path) -> Result<Option<String>> {
        let path = self.path(rel);
        self.block(async {
            let r = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut out = std::fs::File::create(dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            let mut hasher = blake3::Hasher::new();
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                out.write_all(&chunk)?;
            }
            out.sync_all()?;
            anyhow::Ok(Some(hasher.finalize().to_hex().to_string()))
        })
        .with_context(|| format!("cannot download {rel} from the remote cache {}", self.url))
    }
}

#[cfg(feature = "s3")]
fn s3(url: &str, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .with_context(|| format!("remote cache `{url}`"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
fn s3(url: &str, _bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    Err(crate::InvalidInput(format!(
        "remote cache `{url}`: this edge-eval was built without S3 support; build it with \
         `cargo build --release --features s3` (or use a shared folder: file:///…)"
    ))
    .into())
}
