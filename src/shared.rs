//! Shared storage on an object store, for clusters without a shared folder: with
//! `shared_dir: s3://bucket/prefix`, every machine keeps its working copy of logs, reports
//! and datasets in its own `.cauce/` (where all the code that writes and reads them looks),
//! and this module mirrors them through the bucket: an attempt's datasets are uploaded when
//! it succeeds and downloaded by the machine that runs a task downstream of it; its log is
//! uploaded every few seconds while it runs and once at its end, and the server downloads a
//! log it does not have when asked for it; run reports are uploaded when written.
//!
//! Keys mirror the paths under `.cauce/`: `PREFIX/logs/RUN/TASK.N.log`,
//! `PREFIX/data/RUN/TASK/part-000-000000.arrow`, `PREFIX/reports/RUN.json`. A download lands under
//! a temporary name and is renamed, so a reader never sees half a file or half a dataset.
//! Credentials, region and endpoint come from the standard `AWS_*` variables.
//!
//! It does not decide what to mirror or when (the engine, the worker and the server call
//! it), and it deletes nothing: old objects are left to the bucket's lifecycle rules.

use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Why shared storage failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// `shared_dir` is not a URL this cauce can use.
    #[error("shared_dir `{url}`: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The object store refused or could not be reached.
    #[error("shared storage {url}: {source}")]
    Store {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// Sending a file to the object store failed.
    #[error("shared storage {url}, {key}: {source}")]
    Upload {
        /// Where.
        url: String,
        /// The object's key.
        key: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Local {
        /// Which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether a `shared_dir` value is an object-store URL (rather than a folder).
pub fn is_url(value: &str) -> bool {
    value.contains("://") && !value.starts_with("file://")
}

/// The S3 setting a `shared_options` key names (`endpoint`, `region`, `allow_http`...).
pub fn option_key(name: &str) -> Result<object_store::aws::AmazonS3ConfigKey, String> {
    name.parse().map_err(|_| {
        format!("unknown shared_options key `{name}` (S3 settings such as endpoint, region, allow_http, access_key_id, secret_access_key)")
    })
}

/// An object store that mirrors a machine's `.cauce/`.
#[derive(Debug)]
pub struct SharedStorage {
    store: Arc<dyn ObjectStore>,
    /// The URL as configured (shown in errors; it holds no credentials).
    url: String,
    /// The key prefix inside the bucket.
    prefix: Key,
    /// The local folder mirrored (`.cauce/`).
    root: PathBuf,
}

impl SharedStorage {
    /// Opens `s3://bucket[/prefix]` for mirroring `root`, with `options` (object_store's
    /// S3 settings such as `endpoint`, `region`, `allow_http`, `access_key_id`) over the
    /// `AWS_*` variables. Only checks the URL and the settings; nothing is sent until the
    /// first transfer.
    pub fn open(
        url: &str,
        root: &Path,
        options: &[(String, String)],
    ) -> Result<SharedStorage, SharedError> {
        let bad = |why: &str| SharedError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            bad("only s3:// URLs (or a folder every machine mounts) are supported")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name (write s3://BUCKET/PREFIX)"));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in options {
            builder = builder.with_config(option_key(k).map_err(|e| bad(&e))?, v);
        }
        let store = builder.build().map_err(|e| bad(&e.to_string()))?;
        let prefix = Key::parse(prefix.trim_matches('/')).map_err(|e| bad(&e.to_string()))?;
        Ok(SharedStorage {
            store: Arc::new(store),
            url: url.to_string(),
            prefix,
            root: root.to_path_buf(),
        })
    }

    fn store_err(&self, source: object_store::Error) -> SharedError {
        SharedError::Store {
            url: self.url.clone(),
            source,
        }
    }

    /// The key of a local path under the mirrored folder.
    fn key(&self, local: &Path) -> Option<Key> {
        let rel = local.strip_prefix(&self.root).ok()?;
        let mut key = self.prefix.clone();
        for part in rel.components() {
            key = key.join(part.as_os_str().to_str()?);
        }
        Some(key)
    }

    /// The local path of a key under the prefix.
    fn local(&self, key: &Key) -> Option<PathBuf> {
        let mut path = self.root.clone();
        for part in key.prefix_match(&self.prefix)? {
            path.push(part.as_ref());
        }
        Some(path)
    }

    /// Uploads one local file (streamed in parts: a dataset may be larger than memory).
    pub async fn push_file(&self, local: &Path) -> Result<(), SharedError> {
        let Some(key) = self.key(local) else {
            return Ok(()); // not under the mirrored folder: nothing another machine reads
        };
        let io = |source| SharedError::Local {
            path: local.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let upload = |source| SharedError::Upload {
            url: self.url.clone(),
            key: key.to_string(),
            source,
        };
        let mut up = object_store::buffered::BufWriter::new(Arc::clone(&self.store), key.clone());
        if let Err(e) = tokio::io::copy(&mut file, &mut up).await {
            let _ = up.abort().await;
            return Err(upload(e));
        }
        up.shutdown().await.map_err(upload)
    }

    /// Uploads every file under a local folder.
    pub async fn push_tree(&self, dir: &Path) -> Result<usize, SharedError> {
        let mut files = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            let rd = std::fs::read_dir(&d).map_err(|source| SharedError::Local {
                path: d.display().to_string(),
                source,
            })?;
            for entry in rd.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        for f in &files {
            self.push_file(f).await?;
        }
        Ok(files.len())
    }

    /// Downloads one object to its local path (replacing the local copy); false if the
    /// bucket does not have it.
    pub async fn pull_file(&self, local: &Path) -> Result<bool, SharedError> {
        let Some(key) = self.key(local) else {
            return Ok(false);
        };
        match self.store.get(&key).await {
            Ok(got) => {
                self.write_local(got.into_stream(), local).await?;
                Ok(true)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Streams an object's bytes to `local` through a temporary name.
    async fn write_local<B: AsRef<[u8]>>(
        &self,
        mut stream: impl futures_util::Stream<Item = object_store::Result<B>> + Unpin,
        local: &Path,
    ) -> Result<(), SharedError> {
        let io = |source| SharedError::Local {
            path: local.display().to_string(),
            source,
        };
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let tmp = local.with_extension(format!("part-{:08x}", rand::random::<u32>()));
        let mut out = tokio::fs::File::create(&tmp).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(self.store_err(e));
                }
            };
            out.write_all(chunk.as_ref()).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        drop(out);
        tokio::fs::rename(&tmp, local).await.map_err(io)
    }

    /// Downloads every object under a local folder's key into a temporary folder, then
    /// renames it into place: the folder appears whole or not at all. Returns how many
    /// files it got (0: the bucket has nothing there, and no folder is made).
    pub async fn pull_tree(&self, dir: &Path) -> Result<usize, SharedError> {
        let Some(key) = self.key(dir) else {
            return Ok(0);
        };
        let objects: Vec<_> = self
            .store
            .list(Some(&key))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| self.store_err(e))?;
        if objects.is_empty() {
            return Ok(0);
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
        let tmp = dir.with_file_name(format!(".{name}.pull-{:08x}", rand::random::<u32>()));
        for meta in &objects {
            let Some(rel) = meta.location.prefix_match(&key) else {
                continue;
            };
            let mut path = tmp.clone();
            for part in rel {
                path.push(part.as_ref());
            }
            let got = self
                .store
                .get(&meta.location)
                .await
                .map_err(|e| self.store_err(e))?;
            if let Err(e) = self.write_local(got.into_stream(), &path).await {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        if dir.exists() {
            // Another attempt on this machine got it first; theirs is as good.
            let _ = std::fs::remove_dir_all(&tmp);
        } else if let Err(source) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(SharedError::Local {
                path: dir.display().to_string(),
                source,
            });
        }
        Ok(objects.len())
    }

    /// Uploads the datasets of task `task_id` in a run's data folder (its own and its named
    /// outputs `TASK@NAME`).
    pub async fn push_datasets(
        &self,
        run_data_dir: &Path,
        task_id: &str,
    ) -> Result<usize, SharedError> {
        let mut names = vec![task_id.to_string()];
        names.extend(crate::data::dataset::outputs(run_data_dir, task_id));
        let mut n = 0;
        for name in names {
            let dir = crate::data::dataset::dir(run_data_dir, &name);
            if dir.is_dir() {
                n += self.push_tree(&dir).await?;
            }
        }
        Ok(n)
    }

    /// The dataset folders the bucket has for a run (`TASK`, `TASK@NAME`), by name.
    async fn remote_datasets(
        &self,
        run_data_dir: &Path,
    ) -> Result<Vec<(String, Key)>, SharedError> {
        let Some(run_key) = self.key(run_data_dir) else {
            return Ok(Vec::new());
        };
        let listing = self
            .store
            .list_with_delimiter(Some(&run_key))
            .await
            .map_err(|e| self.store_err(e))?;
        Ok(listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| Some((p.filename()?.to_string(), p)))
            .collect())
    }

    /// The tasks of a run the bucket has datasets of.
    pub async fn tasks_with_datasets(
        &self,
        run_data_dir: &Path,
    ) -> Result<std::collections::HashSet<String>, SharedError> {
        Ok(self
            .remote_datasets(run_data_dir)
            .await?
            .iter()
            .map(|(name, _)| crate::data::dataset::owner(name).to_string())
            .collect())
    }

    /// Downloads the datasets (their own and their named outputs) of those of `task_ids`
    /// this machine has none of, and of the tasks their views read through
    /// ([`crate::data::view`]), with one listing of the run per level of views. Returns the
    /// files fetched per task, for the tasks the bucket had something of.
    pub async fn pull_datasets(
        &self,
        run_data_dir: &Path,
        task_ids: &[String],
    ) -> Result<Vec<(String, usize)>, SharedError> {
        let mut fetched = Vec::new();
        let mut seen: std::collections::HashSet<String> = task_ids.iter().cloned().collect();
        let mut want = task_ids.to_vec();
        while !want.is_empty() {
            fetched.extend(self.pull_missing(run_data_dir, &want).await?);
            want = want
                .iter()
                .filter_map(|t| {
                    let dir = crate::data::dataset::dir(run_data_dir, t);
                    crate::data::view::View::load(&dir).ok().flatten()
                })
                .flat_map(|v| v.tables)
                .filter(|t| seen.insert(t.clone()))
                .collect();
        }
        Ok(fetched)
    }

    /// [`SharedStorage::pull_datasets`] of `task_ids` alone.
    async fn pull_missing(
        &self,
        run_data_dir: &Path,
        task_ids: &[String],
    ) -> Result<Vec<(String, usize)>, SharedError> {
        let missing: Vec<&String> = task_ids
            .iter()
            .filter(|t| {
                !crate::data::dataset::exists(run_data_dir, t)
                    && crate::data::dataset::outputs(run_data_dir, t).is_empty()
            })
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let mut fetched: Vec<(String, usize)> = Vec::new();
        for (name, key) in self.remote_datasets(run_data_dir).await? {
            let owner = crate::data::dataset::owner(&name);
            if !missing.iter().any(|t| t.as_str() == owner) {
                continue;
            }
            let Some(local) = self.local(&key) else {
                continue;
            };
            if local.is_dir() {
                continue;
            }
            let n = self.pull_tree(&local).await?;
            match fetched.iter_mut().find(|(t, _)| t == owner) {
                Some((_, total)) => *total += n,
                None => fetched.push((owner.to_string(), n)),
            }
        }
        Ok(fetched)
    }
}
