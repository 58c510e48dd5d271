//! The GNOME desktop app, built with the `gui` feature. `run` is the entry `crate::cli` calls when
//! `kiln` starts with no subcommand. One widget per file: `application.rs` (KilnApplication),
//! `window/` (KilnWindow, split by concern), `output_pane.rs`, `cluster_pane.rs`, `problems_pane.rs`,
//! `preferences_dialog.rs`; plain helpers beside them: `config.rs` (app id), `settings.rs`
//! (GSettings), `embedded.rs` (in-process server), `tokens.rs`, `draft.rs`, `languages.rs`.
//! Templates and CSS are in `resources/`; desktop files, schema and icons in `data/`.
//! The app talks to servers only through `crate::client`, on worker threads.

mod application;
mod cluster_pane;
pub mod config;
mod draft;
mod embedded;
mod languages;
mod output_pane;
mod preferences_dialog;
mod problems_pane;
mod settings;
mod tokens;
mod window;

use std::process::ExitCode;

use gtk::gio;
use gtk::prelude::*;

pub use application::KilnApplication;
pub use cluster_pane::KilnClusterPane;
pub use output_pane::KilnOutputPane;
pub use preferences_dialog::KilnPreferencesDialog;
pub use problems_pane::KilnProblemsPane;
pub use window::KilnWindow;

/// Starts the desktop app and returns when its last window closed.
pub fn run() -> ExitCode {
    crate::cli::init_logging("kiln=info");
    let settings = match init() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("kiln: cannot start the desktop app: {message}");
            return ExitCode::FAILURE;
        }
    };
    let app = KilnApplication::new(settings, gio::ApplicationFlags::empty());
    // GTK must not see kiln's own arguments (they were parsed by clap already).
    let argv0 = std::env::args().next().unwrap_or_else(|| "kiln".to_owned());
    let status = app.run_with_args(&[argv0]);
    ExitCode::from(status)
}

/// Initialises GTK, libadwaita and GtkSourceView, registers the resources and opens the settings.
/// Tests call this before building an application.
///
/// # Errors
/// A message when there is no display, or the resources or settings are missing.
pub fn init() -> Result<gio::Settings, String> {
    gtk::init().map_err(|error| format!("{error} (is there a display?)"))?;
    adw::init().map_err(|error| error.to_string())?;
    sourceview5::init();
    gio::resources_register_include!("kiln.gresource")
        .map_err(|error| format!("cannot load the app's resources: {error}"))?;
    gtk::Window::set_default_icon_name(config::APP_ID);
    settings::open()
}
