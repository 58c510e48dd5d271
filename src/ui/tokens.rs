//! Tokens of remote servers, kept out of GSettings (which any app of the user can read and which
//! often ends up in backups of dconf) in a file only the user can read:
//! `$XDG_CONFIG_HOME/kiln/tokens`, mode 600, one `host:port<TAB>token` per line. The server list
//! itself is in GSettings (`servers`); the preferences dialog and the window read tokens from here.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The token file of the current user.
pub fn default_path() -> PathBuf {
    gtk::glib::user_config_dir().join("kiln").join("tokens")
}

/// Every token in the file at `path`; a missing file is an empty map.
///
/// # Errors
/// If the file exists and cannot be read.
pub fn load(path: &Path) -> io::Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(error),
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(addr, token)| (addr.to_owned(), token.to_owned()))
        .collect())
}

/// The token for `addr`, if one is stored (read errors count as none: the server then answers
/// `unauthorized`, which the window explains).
pub fn get(path: &Path, addr: &str) -> Option<String> {
    load(path).ok()?.remove(addr)
}

/// Stores `token` for `addr` (an empty token removes it).
///
/// # Errors
/// If the file or its directory cannot be written.
pub fn set(path: &Path, addr: &str, token: &str) -> io::Result<()> {
    let mut tokens = load(path)?;
    let token = token.trim();
    if token.is_empty() {
        tokens.remove(addr);
    } else {
        tokens.insert(addr.to_owned(), token.to_owned());
    }
    save(path, &tokens)
}

/// Writes the whole map: to a private temporary file first, then renamed over the old one, so a
/// crash never leaves a half-written file and the token is never readable by others.
fn save(path: &Path, tokens: &BTreeMap<String, String>) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "token path has no directory")
    })?;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // tempfile creates the file with mode 600.
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    for (addr, token) in tokens {
        writeln!(file, "{addr}\t{token}")?;
    }
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_in_a_private_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kiln").join("tokens");
        assert!(load(&path).expect("missing file is empty").is_empty());
        set(&path, "example.org:7878", " secret ").expect("set");
        set(&path, "10.0.0.2:9000", "other").expect("set");
        assert_eq!(get(&path, "example.org:7878").as_deref(), Some("secret"));
        assert_eq!(get(&path, "10.0.0.2:9000").as_deref(), Some("other"));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        set(&path, "example.org:7878", "").expect("remove");
        assert_eq!(get(&path, "example.org:7878"), None);
        assert_eq!(load(&path).expect("load").len(), 1);
    }
}
