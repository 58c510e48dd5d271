//! The GNOME desktop app (being built in the desktop-app issue).

use std::process::ExitCode;

/// Starts the desktop app.
pub fn run() -> ExitCode {
    eprintln!("kiln: the desktop app is not part of this build yet; use `kiln run FILE`");
    ExitCode::from(crate::cli::EXIT_USAGE)
}
