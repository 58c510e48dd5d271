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

use gtk::prelude::*;
use gtk::{gio, glib};

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
    quit_on_termination_signals(&app);
    // GTK must not see kiln's own arguments (they were parsed by clap already).
    let argv0 = std::env::args().next().unwrap_or_else(|| "kiln".to_owned());
    let status = app.run_with_args(&[argv0]);
    ExitCode::from(status)
}

/// SIGTERM (logging out, `kill`), SIGINT (Ctrl+C in a terminal) and SIGHUP close the windows as
/// Quit would, keeping the draft and removing the temporary files, instead of dying mid-write.
/// A thread waits for the signals and hands them to the main loop.
fn quit_on_termination_signals(app: &KilnApplication) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (sender, receiver) = async_channel::bounded::<i32>(1);
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new()
                .name("kiln-signals".into())
                .spawn(move || {
                    for signal in signals.forever() {
                        if sender.send_blocking(signal).is_err() {
                            break;
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "no signal thread: SIGTERM ends the app without saving");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch signals: SIGTERM ends the app without saving")
        }
    }
    glib::spawn_future_local(glib::clone!(
        #[weak]
        app,
        async move {
            while let Ok(signal) = receiver.recv().await {
                tracing::info!(signal, "quitting on a signal");
                app.quit_keeping_drafts();
            }
        }
    ));
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
