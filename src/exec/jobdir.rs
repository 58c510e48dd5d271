//! Each job's private temporary directory, removed when the job ends whatever happened in it.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// This process's directory and the open lock file that marks it alive.
static PROCESS_DIR: Mutex<Option<(PathBuf, fs::File)>> = Mutex::new(None);
/// The lock file in each process directory: held (shared) for the process's whole life, so another
/// Kiln process can tell a live directory from a stale one even across PID namespaces.
const OWNER_LOCK: &str = ".owner";

/// The directory of this process's temporary files, `$TMPDIR/kiln-<pid>`: job directories under
/// `jobs/` and the sandbox's toolchain staging. Created once per process; the first call also
/// removes what Kiln processes that died without cleaning up (SIGKILL, a crash) left behind.
///
/// # Errors
/// If the directory or its lock cannot be created.
pub fn process_dir() -> io::Result<PathBuf> {
    let mut slot = PROCESS_DIR.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((path, _)) = slot.as_ref() {
        return Ok(path.clone());
    }
    let temp = std::env::temp_dir();
    let dir = temp.join(format!("kiln-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    // Jobs may run as another user (the sandbox drops privileges), so it must be traversable.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
    let lock = fs::File::create(dir.join(OWNER_LOCK))?;
    flock(&lock, libc::LOCK_SH | libc::LOCK_NB)?;
    sweep_stale(&temp, &dir);
    *slot = Some((dir.clone(), lock));
    Ok(dir)
}

/// Creates (once per process) the directory that holds the job directories.
///
/// # Errors
/// If the directory cannot be created.
pub fn create_root() -> io::Result<PathBuf> {
    let root = process_dir()?.join("jobs");
    fs::create_dir_all(&root)?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o711))?;
    Ok(root)
}

/// Removes this process's directory with everything in it; call when the process is done with
/// jobs (the end of `main`). A later [`process_dir`] makes a new one.
pub fn remove_process_dir() {
    let mut slot = PROCESS_DIR.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((path, lock)) = slot.take() {
        remove_tree(&path);
        drop(lock);
    }
}

fn flock(file: &fs::File, operation: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes other `kiln-<pid>` directories of this user whose process is gone: their lock can be
/// taken, or (without a lock) no process has their pid.
fn sweep_stale(temp: &Path, own: &Path) {
    let Ok(entries) = fs::read_dir(temp) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix("kiln-")) else {
            continue;
        };
        if path == own || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        let stale = match fs::File::open(path.join(OWNER_LOCK)) {
            Ok(lock) => flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                !Path::new("/proc").join(pid).exists()
            }
            Err(_) => false,
        };
        if stale {
            tracing::debug!(dir = %path.display(), "removing a stale Kiln directory");
            remove_tree(&path);
        }
    }
}

/// A job's directory; dropping it removes it and everything the program left in it.
#[derive(Debug)]
pub struct JobDir {
    dir: tempfile::TempDir,
}

impl JobDir {
    /// A new empty directory under `root`.
    ///
    /// # Errors
    /// If it cannot be created.
    pub fn create(root: &Path) -> io::Result<JobDir> {
        let dir = tempfile::Builder::new().prefix("job-").tempdir_in(root)?;
        Ok(JobDir { dir })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file in the directory and returns its path.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self.dir.path().join(name);
        fs::write(&path, bytes)?;
        // The job may run as another user, who must be able to read what the server wrote.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        // A program may have taken away its own write permission on directories it made, which
        // would stop the removal; give it back first.
        restore_permissions(self.dir.path());
    }
}

/// Removes `dir` and everything in it, best effort, even directories a program made read-only.
fn remove_tree(dir: &Path) {
    restore_permissions(dir);
    let _ = fs::remove_dir_all(dir);
}

fn restore_permissions(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Ok(kind) = entry.file_type()
            && kind.is_dir()
        {
            restore_permissions(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_process_directories_are_swept_and_live_ones_kept() {
        let temp = tempfile::tempdir().expect("tempdir");
        // A directory whose owner died: its lock is free.
        let dead = temp.path().join("kiln-4000001");
        fs::create_dir(&dead).expect("mkdir");
        fs::write(dead.join(OWNER_LOCK), b"").expect("lock file");
        fs::create_dir(dead.join("jobs")).expect("mkdir jobs");
        // A live one: someone holds its lock.
        let live = temp.path().join("kiln-4000002");
        fs::create_dir(&live).expect("mkdir");
        let held = fs::File::create(live.join(OWNER_LOCK)).expect("lock file");
        flock(&held, libc::LOCK_SH).expect("flock");
        // An older layout without a lock, for a pid nobody has (above the kernel's maximum).
        let unlocked = temp.path().join("kiln-4999999");
        fs::create_dir(&unlocked).expect("mkdir");
        // Not Kiln's.
        let other = temp.path().join("kiln-notes");
        fs::create_dir(&other).expect("mkdir");
        sweep_stale(temp.path(), &temp.path().join("kiln-1"));
        assert!(!dead.exists(), "a dead process's directory stays");
        assert!(
            !unlocked.exists(),
            "an unlocked directory of a gone pid stays"
        );
        assert!(live.exists(), "a live process's directory was removed");
        assert!(other.exists(), "a directory that is not Kiln's was removed");
    }

    #[test]
    fn removes_everything_even_read_only_directories() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = JobDir::create(root.path()).expect("job dir");
        let path = dir.path().to_path_buf();
        let locked = path.join("locked");
        fs::create_dir(&locked).expect("mkdir");
        fs::write(locked.join("file"), b"x").expect("write");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).expect("chmod");
        drop(dir);
        assert!(!path.exists());
    }
}
