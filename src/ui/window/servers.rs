//! The server and language selectors. The server list lives in GSettings (`servers`,
//! `current-server`) and the tokens in `crate::ui::tokens`; choosing a server asks it for INFO on a
//! worker thread and fills the language selector with what it offers.

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::glib;

use super::KilnWindow;
use super::run::Target;
use crate::client::{LanguageInfo, ServerInfo};
use crate::ui::tokens;

/// The label of the embedded server in the selector.
pub(crate) const EMBEDDED_LABEL: &str = "This computer";

impl KilnWindow {
    pub(super) fn setup_servers(&self) {
        let imp = self.imp();
        let settings = self.settings();
        let last = settings.string("last-language").to_string();
        self.update_languages(vec![fallback_language(&last)]);
        self.update_server_model();

        settings.connect_changed(
            Some("servers"),
            glib::clone!(
                #[weak(rename_to = window)]
                self,
                move |_, _| window.update_server_model()
            ),
        );
        settings.connect_changed(
            Some("current-server"),
            glib::clone!(
                #[weak(rename_to = window)]
                self,
                move |_, _| window.update_server_model()
            ),
        );
        imp.server_dropdown.connect_selected_notify(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| window.on_server_selected()
        ));
        imp.language_dropdown.connect_selected_notify(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| window.on_language_selected()
        ));
        self.fetch_languages();
    }

    /// Rebuilds the server selector from the settings and selects the current server.
    fn update_server_model(&self) {
        let imp = self.imp();
        let settings = self.settings();
        let servers: Vec<String> = settings
            .strv("servers")
            .iter()
            .map(|s| s.to_string())
            .collect();
        let current = settings.string("current-server").to_string();
        let selected = servers
            .iter()
            .position(|addr| *addr == current)
            .map_or(0, |index| index + 1);
        let changed = *imp.servers.borrow() != servers || imp.server_model.n_items() == 0;
        let previous = imp.server_dropdown.selected();
        imp.syncing.set(true);
        if changed {
            let mut labels = vec![EMBEDDED_LABEL];
            labels.extend(servers.iter().map(String::as_str));
            imp.server_model
                .splice(0, imp.server_model.n_items(), &labels);
            imp.servers.replace(servers);
        }
        imp.server_dropdown.set_selected(selected as u32);
        imp.syncing.set(false);
        if previous != selected as u32 {
            self.fetch_languages();
        }
    }

    fn on_server_selected(&self) {
        let imp = self.imp();
        if imp.syncing.get() {
            return;
        }
        let index = imp.server_dropdown.selected() as usize;
        let addr = match index {
            0 => String::new(),
            n => imp.servers.borrow().get(n - 1).cloned().unwrap_or_default(),
        };
        imp.syncing.set(true);
        let _ = self.settings().set_string("current-server", &addr);
        imp.syncing.set(false);
        self.fetch_languages();
    }

    /// The current server and its label.
    pub(crate) fn current_target(&self) -> (Target, String) {
        let imp = self.imp();
        let index = imp.server_dropdown.selected() as usize;
        let remote = index
            .checked_sub(1)
            .and_then(|i| imp.servers.borrow().get(i).cloned());
        match remote {
            Some(addr) => {
                let token = tokens::get(&tokens::default_path(), &addr);
                (
                    Target::Remote {
                        addr: addr.clone(),
                        token,
                    },
                    addr,
                )
            }
            None => (Target::Embedded(self.embedded()), EMBEDDED_LABEL.to_owned()),
        }
    }

    /// Asks the current server for its languages, off the main thread.
    pub(super) fn fetch_languages(&self) {
        let imp = self.imp();
        let generation = imp.info_generation.get() + 1;
        imp.info_generation.set(generation);
        let (target, label) = self.current_target();
        let (sender, receiver) = async_channel::bounded::<Result<ServerInfo, String>>(1);
        let spawned = std::thread::Builder::new()
            .name("kiln-info".into())
            .spawn(move || {
                let info = target
                    .client()
                    .and_then(|client| client.info().map_err(|error| error.to_string()));
                let _ = sender.send_blocking(info);
            });
        if spawned.is_err() {
            return;
        }
        let weak = self.downgrade();
        glib::spawn_future_local(async move {
            let Ok(info) = receiver.recv().await else {
                return;
            };
            let Some(window) = weak.upgrade() else {
                return;
            };
            if window.imp().info_generation.get() != generation {
                return;
            }
            window.update_cluster_page(info.as_ref().ok());
            match info {
                Ok(info) if info.languages.is_empty() => window.show_toast(&format!(
                    "{label} offers no languages: pick another server"
                )),
                Ok(info) => window.update_languages(info.languages),
                Err(error) => window.show_toast(&format!(
                    "Cannot reach {label} ({error}): check the address and token in Preferences, or switch to {EMBEDDED_LABEL}"
                )),
            }
        });
    }

    /// Fills the language selector, keeping the last used language selected when offered.
    pub(super) fn update_languages(&self, languages: Vec<LanguageInfo>) {
        let imp = self.imp();
        let wanted = self.settings().string("last-language").to_string();
        let selected = languages
            .iter()
            .position(|language| language.id == wanted)
            .unwrap_or(0);
        let labels: Vec<&str> = languages
            .iter()
            .map(|language| language.name.as_str())
            .collect();
        imp.syncing.set(true);
        imp.language_model
            .splice(0, imp.language_model.n_items(), &labels);
        imp.languages.replace(languages);
        imp.language_dropdown.set_selected(selected as u32);
        imp.syncing.set(false);
        if let Some(language) = self.current_language() {
            self.update_highlighting(&language.id);
            imp.language_dropdown
                .set_tooltip_text(Some(&format!("{} {}", language.name, language.version)));
        }
    }

    fn on_language_selected(&self) {
        if self.imp().syncing.get() {
            return;
        }
        if let Some(language) = self.current_language() {
            let previous = self.settings().string("last-language").to_string();
            let _ = self.settings().set_string("last-language", &language.id);
            self.update_highlighting(&language.id);
            self.update_template(&previous, &language.id);
            self.imp()
                .language_dropdown
                .set_tooltip_text(Some(&format!("{} {}", language.name, language.version)));
            self.schedule_draft_save();
        }
    }

    /// Swaps an untouched template of `previous` for the template of `language`, so a new file
    /// starts right in the language chosen; real text is never replaced.
    fn update_template(&self, previous: &str, language: &str) {
        if self.imp().file.borrow().is_some() {
            return;
        }
        let buffer = self.buffer();
        let text = buffer.text(&buffer.start_iter(), &buffer.end_iter(), false);
        let pristine = text.trim().is_empty() || text == crate::ui::languages::template(previous);
        let template = crate::ui::languages::template(language);
        if pristine && !template.is_empty() && text != template {
            self.replace_text(template);
            buffer.set_modified(false);
        }
    }

    /// The selected language.
    pub(crate) fn current_language(&self) -> Option<LanguageInfo> {
        let imp = self.imp();
        let index = imp.language_dropdown.selected() as usize;
        imp.languages.borrow().get(index).cloned()
    }

    /// Selects the language `id` (a file's language), adding it if the server's list lacks it so
    /// the user sees what the file is; running it then explains that the server cannot.
    pub(super) fn select_language(&self, id: &str) {
        let _ = self.settings().set_string("last-language", id);
        let mut languages = self.imp().languages.borrow().clone();
        if !languages.iter().any(|language| language.id == id) {
            languages.push(fallback_language(id));
        }
        self.update_languages(languages);
    }
}

/// A language entry before the server said what it offers.
fn fallback_language(id: &str) -> LanguageInfo {
    let name = match id {
        "python" => "Python".to_owned(),
        "cpp" => "C++".to_owned(),
        "c" => "C".to_owned(),
        "rust" => "Rust".to_owned(),
        other => other.to_owned(),
    };
    LanguageInfo {
        id: id.to_owned(),
        name,
        version: String::new(),
    }
}
