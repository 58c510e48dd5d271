//! Each job's private temporary directory, removed when the job ends whatever happened in it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Creates (once per process) the directory that holds the job directories.
///
/// # Errors
/// If the directory cannot be created.
pub fn create_root() -> io::Result<PathBuf> {
    let root = std::env::temp_dir().join(format!("kiln-{}", std::process::id()));
    fs::create_dir_all(&root)?;
    // Jobs may run as another user (the sandbox drops privileges), so the root must be traversable.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o711))?;
    Ok(root)
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
