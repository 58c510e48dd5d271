//! The draft: the editor's text, language and file, and the program's input and arguments, saved
//! to `$XDG_DATA_HOME/kiln/draft` (JSON) a moment after each change and when the window closes,
//! and restored at start, so nothing typed is lost by closing the app. The window
//! (`window/files.rs`) decides when to save.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the editor held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// The language id (`python`).
    pub language: String,
    /// The editor's text.
    pub text: String,
    /// The file the text came from or was saved to, if any.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The Input area's text (the program's stdin).
    #[serde(default)]
    pub input: String,
    /// The Arguments field's text, as typed.
    #[serde(default)]
    pub arguments: String,
}

/// The draft file of the current user.
pub fn default_path() -> PathBuf {
    gtk::glib::user_data_dir().join("kiln").join("draft")
}

impl Draft {
    /// Reads the draft at `path`; `None` if there is none or it does not parse.
    pub fn load(path: &Path) -> Option<Draft> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the draft to `path` (through a temporary file, so a crash keeps the old draft).
    ///
    /// # Errors
    /// If the directory or file cannot be written.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = path.parent().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "draft path has no directory")
        })?;
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        let file = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(file.path(), json)?;
        file.persist(path).map_err(|error| error.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_round_trips_and_bad_files_are_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kiln").join("draft");
        assert_eq!(Draft::load(&path), None);
        let draft = Draft {
            language: "python".into(),
            text: "print('é')\n".into(),
            path: Some(PathBuf::from("/tmp/a.py")),
            input: "Ada\n".into(),
            arguments: "-n 3".into(),
        };
        draft.save(&path).expect("save");
        assert_eq!(Draft::load(&path), Some(draft));
        std::fs::write(&path, "not json").expect("write");
        assert_eq!(Draft::load(&path), None);
    }

    #[test]
    fn a_draft_from_before_input_and_arguments_still_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("draft");
        std::fs::write(&path, r#"{"language":"c","text":"int main;","path":null}"#).expect("write");
        let draft = Draft::load(&path).expect("loads");
        assert_eq!((draft.input.as_str(), draft.arguments.as_str()), ("", ""));
        assert_eq!(draft.text, "int main;");
    }
}
