//! `KilnPreferencesDialog`: editor font and tab width, output wrap, the built-in server's limits
//! and sharing, and the list of remote servers (add with address and token, see whether each is
//! reachable, remove). Everything is stored in GSettings (bound here) except tokens, which go to
//! the private file of `tokens.rs`; the window and the application react to the settings.

use std::cell::OnceCell;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{CompositeTemplate, gio, glib};

use super::application::KilnApplication;
use super::embedded::EmbeddedServer;
use super::tokens;
use crate::client::Client;

mod imp {
    use super::*;

    #[derive(Debug, Default, CompositeTemplate)]
    #[template(resource = "/io/github/kiln/Kiln/ui/preferences-dialog.ui")]
    pub struct KilnPreferencesDialog {
        #[template_child]
        pub(super) font_button: TemplateChild<gtk::FontButton>,
        #[template_child]
        pub(super) tab_width_spin: TemplateChild<gtk::SpinButton>,
        #[template_child]
        pub(super) wrap_switch: TemplateChild<gtk::Switch>,
        #[template_child]
        pub(super) workers_spin: TemplateChild<gtk::SpinButton>,
        #[template_child]
        pub(super) time_limit_spin: TemplateChild<gtk::SpinButton>,
        #[template_child]
        pub(super) memory_limit_spin: TemplateChild<gtk::SpinButton>,
        #[template_child]
        pub(super) output_limit_spin: TemplateChild<gtk::SpinButton>,
        #[template_child]
        pub(super) share_switch: TemplateChild<gtk::Switch>,
        #[template_child]
        pub(super) port_spin: TemplateChild<gtk::SpinButton>,
        #[template_child]
        pub(super) share_address_row: TemplateChild<adw::ActionRow>,
        #[template_child]
        pub(super) share_token_row: TemplateChild<adw::ActionRow>,
        #[template_child]
        pub(super) copy_address_button: TemplateChild<gtk::Button>,
        #[template_child]
        pub(super) copy_token_button: TemplateChild<gtk::Button>,
        #[template_child]
        pub(super) servers_group: TemplateChild<adw::PreferencesGroup>,
        #[template_child]
        pub(super) address_row: TemplateChild<adw::EntryRow>,
        #[template_child]
        pub(super) token_row: TemplateChild<adw::PasswordEntryRow>,
        #[template_child]
        pub(super) add_button: TemplateChild<gtk::Button>,
        pub(super) settings: OnceCell<gio::Settings>,
        pub(super) embedded: OnceCell<std::sync::Arc<EmbeddedServer>>,
        /// The rows of the remote servers, to remove them when the list changes.
        pub(super) server_rows: std::cell::RefCell<Vec<adw::ActionRow>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KilnPreferencesDialog {
        const NAME: &'static str = "KilnPreferencesDialog";
        type Type = super::KilnPreferencesDialog;
        type ParentType = adw::PreferencesWindow;

        fn class_init(klass: &mut Self::Class) {
            klass.bind_template();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for KilnPreferencesDialog {}
    impl WidgetImpl for KilnPreferencesDialog {}
    impl WindowImpl for KilnPreferencesDialog {}
    impl AdwWindowImpl for KilnPreferencesDialog {}
    impl PreferencesWindowImpl for KilnPreferencesDialog {}
}

glib::wrapper! {
    /// The Preferences window.
    pub struct KilnPreferencesDialog(ObjectSubclass<imp::KilnPreferencesDialog>)
        @extends gtk::Widget, gtk::Window, adw::Window, adw::PreferencesWindow,
        @implements gtk::Buildable, gtk::ConstraintTarget, gtk::Native,
            gtk::Root, gtk::ShortcutManager;
}

impl KilnPreferencesDialog {
    /// Preferences of `app`.
    pub fn new(app: &KilnApplication) -> Self {
        let dialog: Self = glib::Object::new();
        let imp = dialog.imp();
        let _ = imp.settings.set(app.settings());
        let _ = imp.embedded.set(app.embedded());
        dialog.setup_bindings();
        dialog.setup_sharing();
        dialog.setup_servers();
        dialog
    }

    fn settings(&self) -> &gio::Settings {
        self.imp()
            .settings
            .get()
            .expect("KilnPreferencesDialog::new sets the settings")
    }

    fn setup_bindings(&self) {
        let imp = self.imp();
        let settings = self.settings();
        settings
            .bind("editor-font", &*imp.font_button, "font")
            .build();
        settings
            .bind("tab-width", &*imp.tab_width_spin, "value")
            .build();
        settings
            .bind("output-wrap", &*imp.wrap_switch, "active")
            .build();
        settings
            .bind("embedded-workers", &*imp.workers_spin, "value")
            .build();
        settings
            .bind("time-limit-seconds", &*imp.time_limit_spin, "value")
            .build();
        settings
            .bind("memory-limit-mib", &*imp.memory_limit_spin, "value")
            .build();
        settings
            .bind("output-limit-mib", &*imp.output_limit_spin, "value")
            .build();
        settings
            .bind("share-on-network", &*imp.share_switch, "active")
            .build();
        settings
            .bind("share-port", &*imp.port_spin, "value")
            .build();
    }

    fn setup_sharing(&self) {
        let imp = self.imp();
        let settings = self.settings();
        for key in ["share-on-network", "share-port"] {
            settings.connect_changed(
                Some(key),
                glib::clone!(
                    #[weak(rename_to = dialog)]
                    self,
                    move |_, _| dialog.update_sharing()
                ),
            );
        }
        imp.copy_address_button.connect_clicked(glib::clone!(
            #[weak(rename_to = dialog)]
            self,
            move |_| dialog.copy_subtitle(&dialog.imp().share_address_row, "Address copied")
        ));
        imp.copy_token_button.connect_clicked(glib::clone!(
            #[weak(rename_to = dialog)]
            self,
            move |_| dialog.copy_subtitle(&dialog.imp().share_token_row, "Token copied")
        ));
        self.update_sharing();
    }

    fn copy_subtitle(&self, row: &adw::ActionRow, done: &str) {
        if let Some(text) = row.subtitle().filter(|text| !text.is_empty()) {
            self.clipboard().set_text(&text);
            self.add_toast(adw::Toast::new(done));
        }
    }

    /// Shows the shared server's address and token, starting it on a worker thread (the
    /// application has already restarted it with the new settings).
    fn update_sharing(&self) {
        let imp = self.imp();
        let shared = self.settings().boolean("share-on-network");
        imp.share_address_row.set_visible(shared);
        imp.share_token_row.set_visible(shared);
        if !shared {
            return;
        }
        imp.share_address_row.set_subtitle("Starting…");
        imp.share_token_row.set_subtitle("");
        let Some(embedded) = imp.embedded.get().cloned() else {
            return;
        };
        let port = self.settings().int("share-port");
        let (sender, receiver) = async_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("kiln-share".into())
            .spawn(move || {
                // Let the application's restart with the new settings go first.
                std::thread::sleep(std::time::Duration::from_millis(300));
                let _ = sender.send_blocking(embedded.ensure_started());
            });
        if spawned.is_err() {
            return;
        }
        let weak = self.downgrade();
        glib::spawn_future_local(async move {
            let Ok(result) = receiver.recv().await else {
                return;
            };
            let Some(dialog) = weak.upgrade() else {
                return;
            };
            let imp = dialog.imp();
            match result {
                Ok(endpoint) if endpoint.listen.ip().is_unspecified() => {
                    let host = glib::host_name();
                    imp.share_address_row
                        .set_subtitle(&format!("{host}:{}", endpoint.listen.port()));
                    imp.share_token_row.set_subtitle(&endpoint.token);
                }
                Ok(_) => imp
                    .share_address_row
                    .set_subtitle(&format!("Restarting on port {port}…")),
                Err(message) => {
                    imp.share_address_row.set_subtitle(&message);
                    dialog.add_toast(adw::Toast::new(&glib::markup_escape_text(&message)));
                }
            }
        });
    }

    fn setup_servers(&self) {
        let imp = self.imp();
        self.settings().connect_changed(
            Some("servers"),
            glib::clone!(
                #[weak(rename_to = dialog)]
                self,
                move |_, _| dialog.update_servers()
            ),
        );
        imp.add_button.connect_clicked(glib::clone!(
            #[weak(rename_to = dialog)]
            self,
            move |_| dialog.on_add_server()
        ));
        imp.address_row.connect_entry_activated(glib::clone!(
            #[weak(rename_to = dialog)]
            self,
            move |_| dialog.on_add_server()
        ));
        self.update_servers();
    }

    /// Rebuilds the list of remote servers and checks each one.
    fn update_servers(&self) {
        let imp = self.imp();
        for row in imp.server_rows.take() {
            imp.servers_group.remove(&row);
        }
        let servers = self.settings().strv("servers");
        let mut rows = Vec::new();
        for addr in servers.iter() {
            let addr = addr.to_string();
            let row = adw::ActionRow::builder()
                .title(glib::markup_escape_text(&addr).as_str())
                .subtitle("Checking…")
                .build();
            let remove = gtk::Button::builder()
                .icon_name("user-trash-symbolic")
                .valign(gtk::Align::Center)
                .tooltip_text("Remove Server")
                .css_classes(["flat"])
                .build();
            remove.connect_clicked(glib::clone!(
                #[weak(rename_to = dialog)]
                self,
                #[strong]
                addr,
                move |_| dialog.remove_server(&addr)
            ));
            row.add_suffix(&remove);
            imp.servers_group.add(&row);
            self.check_server(&row, addr);
            rows.push(row);
        }
        if rows.is_empty() {
            let row = adw::ActionRow::builder()
                .title("No other servers yet")
                .subtitle("Add one below with its address and token")
                .build();
            imp.servers_group.add(&row);
            rows.push(row);
        }
        imp.server_rows.replace(rows);
    }

    /// Asks the server at `addr` for INFO on a worker thread and shows the answer on `row`.
    fn check_server(&self, row: &adw::ActionRow, addr: String) {
        let token = tokens::get(&tokens::default_path(), &addr);
        let (sender, receiver) = async_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("kiln-check".into())
            .spawn(move || {
                let client = Client::new(addr, token)
                    .with_connect_timeout(std::time::Duration::from_secs(3))
                    .with_read_timeout(Some(std::time::Duration::from_secs(5)));
                let _ = sender.send_blocking(client.info());
            });
        if spawned.is_err() {
            return;
        }
        let row = row.downgrade();
        glib::spawn_future_local(async move {
            let Ok(result) = receiver.recv().await else {
                return;
            };
            let Some(row) = row.upgrade() else {
                return;
            };
            let subtitle = match result {
                Ok(info) => {
                    let languages: Vec<String> = info
                        .languages
                        .iter()
                        .map(|l| format!("{} {}", l.name, l.version).trim().to_owned())
                        .collect();
                    format!(
                        "Reachable · {} · {} · sandbox {} · {} workers",
                        info.get("server").unwrap_or("kiln"),
                        if languages.is_empty() {
                            "no languages".to_owned()
                        } else {
                            languages.join(", ")
                        },
                        info.get("sandbox").unwrap_or("unknown"),
                        info.get("workers").unwrap_or("?"),
                    )
                }
                Err(error) => match error.code() {
                    Some(crate::protocol::ErrorCode::Unauthorized) => {
                        "Refused the token: remove the server and add it again with the right token"
                            .to_owned()
                    }
                    _ => format!("Not reachable: {error}"),
                },
            };
            row.set_subtitle(&glib::markup_escape_text(&subtitle));
        });
    }

    fn on_add_server(&self) {
        let imp = self.imp();
        let addr = imp.address_row.text().trim().to_owned();
        let token = imp.token_row.text().trim().to_owned();
        if let Err(message) = validate_address(&addr) {
            self.add_toast(adw::Toast::new(&glib::markup_escape_text(&message)));
            imp.address_row.add_css_class("error");
            return;
        }
        imp.address_row.remove_css_class("error");
        if let Err(error) = tokens::set(&tokens::default_path(), &addr, &token) {
            self.add_toast(adw::Toast::new(&glib::markup_escape_text(&format!(
                "Cannot store the token in {}: {error}",
                tokens::default_path().display()
            ))));
            return;
        }
        let settings = self.settings();
        let mut servers: Vec<String> = settings
            .strv("servers")
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !servers.contains(&addr) {
            servers.push(addr.clone());
            let refs: Vec<&str> = servers.iter().map(String::as_str).collect();
            let _ = settings.set_strv("servers", refs.as_slice());
        } else {
            // Same server, new token: check it again.
            self.update_servers();
        }
        let _ = settings.set_string("current-server", &addr);
        imp.address_row.set_text("");
        imp.token_row.set_text("");
        self.add_toast(adw::Toast::new(&glib::markup_escape_text(&format!(
            "Added {addr}; programs now run there"
        ))));
    }

    fn remove_server(&self, addr: &str) {
        let settings = self.settings();
        let servers: Vec<String> = settings
            .strv("servers")
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s != addr)
            .collect();
        let refs: Vec<&str> = servers.iter().map(String::as_str).collect();
        if settings.string("current-server") == addr {
            let _ = settings.set_string("current-server", "");
        }
        let _ = settings.set_strv("servers", refs.as_slice());
        let _ = tokens::set(&tokens::default_path(), addr, "");
    }

    /// The address entry of "Add a Server".
    pub fn address_row(&self) -> adw::EntryRow {
        self.imp().address_row.get()
    }

    /// The token entry of "Add a Server".
    pub fn token_row(&self) -> adw::PasswordEntryRow {
        self.imp().token_row.get()
    }

    /// The Add Server button.
    pub fn add_button(&self) -> gtk::Button {
        self.imp().add_button.get()
    }

    /// The subtitles of the remote server rows (their reachability), in order.
    pub fn server_statuses(&self) -> Vec<(String, String)> {
        self.imp()
            .server_rows
            .borrow()
            .iter()
            .map(|row| {
                (
                    row.title().to_string(),
                    row.subtitle().map(|s| s.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Checks `host:port`.
fn validate_address(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "“{addr}” has no port: write it as host:port, for example 192.168.1.20:7878"
        ));
    };
    if host.is_empty() {
        return Err(format!("“{addr}” has no host: write it as host:port"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "“{port}” is not a port: use a number from 1 to 65535"
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::validate_address;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert!(validate_address("example.org:7878").is_ok());
        assert!(validate_address("[::1]:7878").is_ok());
        assert!(
            validate_address("example.org")
                .expect_err("invalid")
                .contains("no port")
        );
        assert!(
            validate_address(":7878")
                .expect_err("invalid")
                .contains("no host")
        );
        assert!(
            validate_address("a:70000")
                .expect_err("invalid")
                .contains("1 to 65535")
        );
    }
}
