//! The compile cache: what a compiler made of a source (success, diagnostics, problems and the
//! program) kept on disk under a SHA-256 key of the language, the compiler's version and flags, the
//! file name and the source, so running the same program twice compiles once. The cache is bounded
//! in bytes; when a new entry pushes it over, the least recently used entries go.
//!
//! It lives in the server's cache directory, which no job can see (the sandbox shows jobs only the
//! system, their toolchain and their own directory). `Executor::execute` (in `super`) calls
//! [`compile`], which falls back to compiling when there is no cache or no entry.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CompileOutput, JobContext, JobSink, Toolchain};
use crate::protocol::Problem;

/// Default bound of the cache on disk.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
const META: &str = "meta.json";
const ARTIFACT: &str = "artifact";

/// What a cache entry records besides the program itself.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    success: bool,
    diagnostics: String,
    problems: Vec<String>,
    artifact_name: String,
    has_artifact: bool,
}

/// Compiled programs on disk, bounded in size, least recently used out first.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    evicting: Mutex<()>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CompileCache {
    /// A cache in `dir` (created, private to the server's user) holding at most `max_bytes`.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<CompileCache> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(CompileCache {
            dir,
            max_bytes,
            evicting: Mutex::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// `$XDG_CACHE_HOME/kiln/compile`, or `~/.cache/kiln/compile`, or one under the temp directory.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("kiln").join("compile")
    }

    /// Where the entries are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Compiles answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Compiles that had to run so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes the entries take now.
    pub fn size(&self) -> u64 {
        self.entries().iter().map(|entry| entry.bytes).sum()
    }

    /// The key of a compile, or `None` if the toolchain is not cached.
    pub fn key(toolchain: &dyn Toolchain, source_name: &str, source: &[u8]) -> Option<String> {
        let flags = toolchain.cache_flags()?;
        let mut hash = Sha256::new();
        for part in [
            toolchain.id().as_bytes(),
            toolchain.version().as_bytes(),
            flags.as_bytes(),
            source_name.as_bytes(),
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.update(source);
        Some(
            hash.finalize()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }

    /// The entry for `key`, with its program copied into `job_dir`.
    fn load(&self, key: &str, job_dir: &Path) -> Option<CompileOutput> {
        let entry = self.dir.join(key);
        let meta: Meta = serde_json::from_slice(&fs::read(entry.join(META)).ok()?).ok()?;
        let artifact = if meta.has_artifact {
            let name = Path::new(&meta.artifact_name).file_name()?;
            let target = job_dir.join(name);
            fs::copy(entry.join(ARTIFACT), &target).ok()?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).ok()?;
            Some(target)
        } else {
            None
        };
        // The modification time of the metadata is the entry's last use.
        if let Ok(file) = fs::File::options().append(true).open(entry.join(META)) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(CompileOutput {
            success: meta.success,
            diagnostics: meta.diagnostics,
            problems: meta
                .problems
                .iter()
                .filter_map(|line| Problem::parse_line(line))
                .collect(),
            artifact,
            artifact_name: meta.artifact_name,
            stopped: None,
        })
    }

    /// Keeps `compiled` under `key`, then trims the cache to its bound.
    fn store(&self, key: &str, compiled: &CompileOutput) -> io::Result<()> {
        let staging = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&self.dir)?;
        let has_artifact = match &compiled.artifact {
            Some(path) => {
                fs::copy(path, staging.path().join(ARTIFACT))?;
                true
            }
            None => false,
        };
        let meta = Meta {
            success: compiled.success,
            diagnostics: compiled.diagnostics.clone(),
            problems: compiled.problems.iter().map(ToString::to_string).collect(),
            artifact_name: compiled.artifact_name.clone(),
            has_artifact,
        };
        fs::write(staging.path().join(META), serde_json::to_vec(&meta)?)?;
        let staged = staging.keep();
        // Another job may have stored the same key meanwhile; either copy is right.
        if fs::rename(&staged, self.dir.join(key)).is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        self.evict();
        Ok(())
    }

    fn entries(&self) -> Vec<Entry> {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        read.flatten()
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|entry| {
                let path = entry.path();
                let used = fs::metadata(path.join(META))
                    .and_then(|m| m.modified())
                    .ok()?;
                let bytes = fs::read_dir(&path)
                    .ok()?
                    .flatten()
                    .filter_map(|file| file.metadata().ok())
                    .map(|meta| meta.len())
                    .sum();
                Some(Entry { path, used, bytes })
            })
            .collect()
    }

    /// Removes the least recently used entries until the cache fits its bound.
    fn evict(&self) {
        let _one_at_a_time = self.evicting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort_by_key(|entry| entry.used);
        for entry in entries {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_dir_all(&entry.path).is_ok() {
                total = total.saturating_sub(entry.bytes);
            }
        }
    }
}

struct Entry {
    path: PathBuf,
    used: SystemTime,
    bytes: u64,
}

/// Compiles through the cache: an entry answers at once; otherwise the toolchain compiles and the
/// result is kept (unless the compiler was stopped, which says nothing about the source).
pub fn compile(
    cache: Option<&CompileCache>,
    toolchain: &dyn Toolchain,
    ctx: &JobContext<'_>,
    sink: &mut dyn JobSink,
) -> CompileOutput {
    let source_name = toolchain.source_file_name(ctx.input.file_name.as_deref());
    let key = cache.and_then(|_| CompileCache::key(toolchain, &source_name, &ctx.input.source));
    let (Some(cache), Some(key)) = (cache, key) else {
        return toolchain.compile(ctx, sink);
    };
    if let Some(compiled) = cache.load(&key, ctx.dir.path()) {
        cache.hits.fetch_add(1, Ordering::Relaxed);
        return compiled;
    }
    cache.misses.fetch_add(1, Ordering::Relaxed);
    let compiled = toolchain.compile(ctx, sink);
    if compiled.stopped.is_none()
        && let Err(error) = cache.store(&key, &compiled)
    {
        tracing::warn!(%error, dir = %cache.dir.display(), "cannot store a compile in the cache");
    }
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_entries_go_first() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::open(root.path().join("cache"), 2500).expect("open");
        let program = root.path().join("program");
        fs::write(&program, vec![7u8; 1000]).expect("write");
        let compiled = CompileOutput {
            success: true,
            artifact: Some(program),
            artifact_name: "main".into(),
            ..CompileOutput::default()
        };
        cache.store("a", &compiled).expect("store a");
        cache.store("b", &compiled).expect("store b");
        let job = tempfile::tempdir().expect("job");
        // Using `a` makes `b` the least recently used.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let loaded = cache.load("a", job.path()).expect("a is there");
        assert_eq!(
            fs::read(loaded.artifact.expect("program"))
                .expect("read")
                .len(),
            1000
        );
        cache.store("c", &compiled).expect("store c");
        assert!(cache.size() <= 2500, "size {}", cache.size());
        assert!(cache.dir().join("a").exists());
        assert!(!cache.dir().join("b").exists());
        assert!(cache.dir().join("c").exists());
    }
}
