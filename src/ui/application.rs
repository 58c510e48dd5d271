//! `KilnApplication`: owns the settings and the embedded server, sets up the app-wide actions
//! (`app.preferences`, `app.about`, `app.quit`) and every accelerator, and opens the window. The
//! embedded server (`embedded.rs`) follows the Preferences: a change restarts it on a worker thread.

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{gio, glib};

use super::config;
use super::embedded::{EmbeddedConfig, EmbeddedServer};
use super::preferences_dialog::KilnPreferencesDialog;
use super::window::KilnWindow;
use crate::exec::Limits;

mod imp {
    use super::*;

    #[derive(Debug, Default)]
    pub struct KilnApplication {
        pub(super) settings: OnceCell<gio::Settings>,
        pub(super) embedded: OnceCell<Arc<EmbeddedServer>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KilnApplication {
        const NAME: &'static str = "KilnApplication";
        type Type = super::KilnApplication;
        type ParentType = adw::Application;
    }

    impl ObjectImpl for KilnApplication {}

    impl ApplicationImpl for KilnApplication {
        fn startup(&self) {
            self.parent_startup();
            let app = self.obj();
            app.setup_actions();
            app.setup_accels();
            app.setup_embedded_settings();
        }

        fn activate(&self) {
            self.parent_activate();
            let app = self.obj();
            let window = app
                .active_window()
                .unwrap_or_else(|| KilnWindow::new(&app).upcast());
            window.present();
        }

        fn shutdown(&self) {
            if let Some(embedded) = self.embedded.get() {
                embedded.shutdown(Duration::from_secs(1));
            }
            self.parent_shutdown();
        }
    }

    impl GtkApplicationImpl for KilnApplication {}
    impl AdwApplicationImpl for KilnApplication {}
}

glib::wrapper! {
    /// The Kiln application.
    pub struct KilnApplication(ObjectSubclass<imp::KilnApplication>)
        @extends gio::Application, gtk::Application, adw::Application,
        @implements gio::ActionGroup, gio::ActionMap;
}

impl KilnApplication {
    /// Closes every window without asking about unsaved files (their text stays in the draft),
    /// then quits.
    pub fn quit_keeping_drafts(&self) {
        for window in self.windows() {
            match window.downcast::<KilnWindow>() {
                Ok(window) => window.close_without_asking(),
                Err(window) => window.close(),
            }
        }
        self.quit();
    }

    /// The application with `settings`; `flags` lets tests run a non-unique instance.
    pub fn new(settings: gio::Settings, flags: gio::ApplicationFlags) -> Self {
        let app: Self = glib::Object::builder()
            .property("application-id", config::APP_ID)
            .property("flags", flags)
            .property("resource-base-path", config::RESOURCE_BASE)
            .build();
        let embedded = Arc::new(EmbeddedServer::new(embedded_config(&settings)));
        let _ = app.imp().embedded.set(embedded);
        let _ = app.imp().settings.set(settings);
        app
    }

    /// The app's settings.
    pub fn settings(&self) -> gio::Settings {
        self.imp()
            .settings
            .get()
            .expect("KilnApplication::new sets the settings")
            .clone()
    }

    /// The embedded server.
    pub fn embedded(&self) -> Arc<EmbeddedServer> {
        Arc::clone(
            self.imp()
                .embedded
                .get()
                .expect("KilnApplication::new sets the embedded server"),
        )
    }

    /// The main window, if open.
    pub fn main_window(&self) -> Option<KilnWindow> {
        self.windows()
            .into_iter()
            .find_map(|window| window.downcast::<KilnWindow>().ok())
    }

    fn setup_actions(&self) {
        let quit = gio::ActionEntry::builder("quit")
            .activate(|app: &Self, _, _| {
                for window in app.windows() {
                    window.close();
                }
            })
            .build();
        let preferences = gio::ActionEntry::builder("preferences")
            .activate(|app: &Self, _, _| {
                app.show_preferences();
            })
            .build();
        let about = gio::ActionEntry::builder("about")
            .activate(|app: &Self, _, _| app.show_about())
            .build();
        self.add_action_entries([quit, preferences, about]);
    }

    fn setup_accels(&self) {
        self.set_accels_for_action("win.run", &["<Control>Return"]);
        self.set_accels_for_action("win.stop", &["Escape", "<Control>period"]);
        self.set_accels_for_action("win.build", &["<Control><Shift>s"]);
        self.set_accels_for_action("win.check", &["F7"]);
        self.set_accels_for_action("win.new", &["<Control>n"]);
        self.set_accels_for_action("win.open", &["<Control>o"]);
        self.set_accels_for_action("win.save", &["<Control>s"]);
        self.set_accels_for_action("win.save-as", &["<Control><Alt>s"]);
        self.set_accels_for_action("win.find", &["<Control>f"]);
        self.set_accels_for_action("app.preferences", &["<Control>comma"]);
        self.set_accels_for_action("app.quit", &["<Control>q"]);
    }

    /// Restarts the embedded server when its settings change (on a worker thread: stopping waits
    /// for running jobs).
    fn setup_embedded_settings(&self) {
        let settings = self.settings();
        for key in [
            "embedded-workers",
            "time-limit-seconds",
            "memory-limit-mib",
            "output-limit-mib",
            "share-on-network",
            "share-port",
        ] {
            settings.connect_changed(
                Some(key),
                glib::clone!(
                    #[weak(rename_to = app)]
                    self,
                    move |settings, _| {
                        let config = embedded_config(settings);
                        let embedded = app.embedded();
                        let _ = std::thread::Builder::new()
                            .name("kiln-reconfigure".into())
                            .spawn(move || embedded.reconfigure(config));
                    }
                ),
            );
        }
    }

    /// Opens Preferences over the main window.
    pub fn show_preferences(&self) -> KilnPreferencesDialog {
        let dialog = KilnPreferencesDialog::new(self);
        if let Some(window) = self.main_window() {
            dialog.set_transient_for(Some(&window));
        }
        dialog.present();
        dialog
    }

    fn show_about(&self) {
        let about = adw::AboutWindow::builder()
            .application_name("Kiln")
            .application_icon(config::APP_ID)
            .developer_name("The Kiln developers")
            .version(config::VERSION)
            .comments("Write a program and run it, here or on another machine")
            .license_type(gtk::License::Gpl30)
            .modal(true)
            .build();
        if let Some(window) = self.main_window() {
            about.set_transient_for(Some(&window));
        }
        about.present();
    }
}

/// The embedded server's configuration from the settings.
pub(crate) fn embedded_config(settings: &gio::Settings) -> EmbeddedConfig {
    let seconds = u64::try_from(settings.int("time-limit-seconds"))
        .unwrap_or(10)
        .max(1);
    let memory = u64::try_from(settings.int("memory-limit-mib"))
        .unwrap_or(512)
        .max(16);
    let output = u64::try_from(settings.int("output-limit-mib"))
        .unwrap_or(4)
        .max(1);
    let workers = usize::try_from(settings.int("embedded-workers"))
        .unwrap_or(2)
        .max(1);
    let share = settings.boolean("share-on-network");
    let port = u16::try_from(settings.int("share-port")).unwrap_or(7878);
    EmbeddedConfig {
        workers,
        run_defaults: Limits {
            wall: Duration::from_secs(seconds),
            cpu: Duration::from_secs(seconds),
            memory_mib: memory,
            output_bytes: output * 1024 * 1024,
            ..Limits::default()
        },
        share_port: share.then_some(port),
    }
}
