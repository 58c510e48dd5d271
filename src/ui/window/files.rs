//! The editor's text as files: New (from the language's template), Open, Save, Save As, the draft
//! that survives a restart (`crate::ui::draft`), the title with the unsaved marker, and asking
//! before closing or replacing a file with unsaved changes. File reads and writes are async GIO.

use std::path::PathBuf;
use std::time::Duration;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{gio, glib};

use super::KilnWindow;
use crate::ui::draft::{self, Draft};
use crate::ui::languages;

/// What to do once the text is saved (close the window, open another file...).
pub type AfterSave = Box<dyn FnOnce(&KilnWindow)>;

/// Quiet time after the last edit before the draft is written.
const DRAFT_DELAY: Duration = Duration::from_millis(800);

impl KilnWindow {
    pub(super) fn setup_draft(&self) {
        let buffer = self.buffer();
        match Draft::load(&draft::default_path()) {
            Some(draft) => {
                self.replace_text(&draft.text);
                self.imp().file.replace(draft.path.clone());
                if !draft.language.is_empty() {
                    self.select_language(&draft.language);
                }
                self.imp()
                    .output_pane
                    .restore_input(&draft.input, &draft.arguments);
                // A draft of a file counts as unsaved when it differs from the file.
                let modified = draft.path.as_ref().is_some_and(|path| {
                    std::fs::read_to_string(path).map_or(true, |text| text != draft.text)
                });
                buffer.set_modified(modified);
            }
            None => {
                let language = self.settings().string("last-language").to_string();
                self.replace_text(languages::template(&language));
                buffer.set_modified(false);
            }
        }
        buffer.connect_changed(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| window.schedule_draft_save()
        ));
        self.imp().output_pane.connect_input_changed(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move || window.schedule_draft_save()
        ));
        buffer.connect_modified_changed(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| window.update_title()
        ));
        self.update_title();
    }

    /// Replaces the editor's text without an undo step (a new file starts with a clean history).
    pub(super) fn replace_text(&self, text: &str) {
        let buffer = self.buffer();
        buffer.begin_irreversible_action();
        buffer.set_text(text);
        buffer.end_irreversible_action();
        buffer.place_cursor(&buffer.start_iter());
    }

    /// Writes the draft a moment after the last change.
    pub(super) fn schedule_draft_save(&self) {
        let imp = self.imp();
        if let Some(source) = imp.draft_timeout.take() {
            source.remove();
        }
        let source = glib::timeout_add_local_once(
            DRAFT_DELAY,
            glib::clone!(
                #[weak(rename_to = window)]
                self,
                move || {
                    window.imp().draft_timeout.take();
                    window.save_draft();
                }
            ),
        );
        imp.draft_timeout.replace(Some(source));
    }

    /// Writes the draft now (small: a write of the editor's text).
    pub(super) fn save_draft(&self) {
        let buffer = self.buffer();
        let draft = Draft {
            language: self.current_language().map_or_else(
                || self.settings().string("last-language").to_string(),
                |l| l.id,
            ),
            text: buffer
                .text(&buffer.start_iter(), &buffer.end_iter(), false)
                .to_string(),
            path: self.imp().file.borrow().clone(),
            input: self.imp().output_pane.input_text(),
            arguments: self.imp().output_pane.arguments_text(),
        };
        if let Err(error) = draft.save(&draft::default_path()) {
            tracing::warn!(%error, "cannot save the draft");
        }
    }

    /// The name of the file the text came from or was saved to, if any.
    pub(super) fn file_name(&self) -> Option<String> {
        self.imp()
            .file
            .borrow()
            .as_ref()
            .and_then(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
    }

    /// The title: the file name (or Untitled) with a dot when there are unsaved changes; the
    /// subtitle is the file's folder.
    pub(super) fn update_title(&self) {
        let imp = self.imp();
        let file = imp.file.borrow().clone();
        let name = self.file_name().unwrap_or_else(|| "Untitled".to_owned());
        let modified = self.buffer().is_modified();
        let title = if modified {
            format!("• {name}")
        } else {
            name.clone()
        };
        imp.window_title.set_title(&title);
        let folder = file
            .as_ref()
            .and_then(|path| path.parent())
            .map(|dir| {
                let home = glib::home_dir();
                match dir.strip_prefix(&home) {
                    Ok(rest) => format!("~/{}", rest.display()),
                    Err(_) => dir.display().to_string(),
                }
            })
            .unwrap_or_default();
        imp.window_title.set_subtitle(&folder);
        self.set_title(Some(&format!("{name} – Kiln")));
    }

    /// Whether leaving the current text would lose changes to a file. An untitled text is kept in
    /// the draft, so it needs no question.
    fn has_unsaved_file(&self) -> bool {
        self.buffer().is_modified() && self.imp().file.borrow().is_some()
    }

    pub(super) fn on_new(&self) {
        self.confirm_unsaved(|window| {
            let language = window
                .current_language()
                .map_or_else(|| "python".to_owned(), |l| l.id);
            window.imp().file.replace(None);
            window.replace_text(languages::template(&language));
            window.buffer().set_modified(false);
            window.update_title();
            window.save_draft();
        });
    }

    pub(super) fn on_open(&self) {
        self.confirm_unsaved(|window| {
            let dialog = gtk::FileChooserNative::new(
                Some("Open Program"),
                Some(window),
                gtk::FileChooserAction::Open,
                Some("_Open"),
                Some("_Cancel"),
            );
            dialog.set_modal(true);
            dialog.connect_response(glib::clone!(
                #[weak]
                window,
                move |dialog, response| {
                    if response == gtk::ResponseType::Accept
                        && let Some(file) = dialog.file()
                    {
                        window.open_file(file);
                    }
                    dialog.destroy();
                }
            ));
            dialog.show();
        });
    }

    /// Loads `file` into the editor; its extension picks the language.
    pub fn open_file(&self, file: gio::File) {
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = window)]
            self,
            async move {
                let name = file.parse_name().to_string();
                let bytes = match file.load_contents_future().await {
                    Ok((bytes, _)) => bytes,
                    Err(error) => {
                        window.show_toast(&format!("Cannot open {name}: {error}"));
                        return;
                    }
                };
                let Ok(text) = String::from_utf8(bytes.to_vec()) else {
                    window.show_toast(&format!("Cannot open {name}: it is not UTF-8 text"));
                    return;
                };
                let path = file.path();
                window.replace_text(&text);
                if let Some(language) = path.as_deref().and_then(languages::for_path) {
                    window.select_language(language);
                }
                window.imp().file.replace(path);
                window.buffer().set_modified(false);
                window.update_title();
                window.save_draft();
            }
        ));
    }

    pub(super) fn on_save(&self) {
        let path = self.imp().file.borrow().clone();
        match path {
            Some(path) => self.save_to(path, None),
            None => self.on_save_as(),
        }
    }

    pub(super) fn on_save_as(&self) {
        self.ask_save_path(None);
    }

    fn ask_save_path(&self, then: Option<AfterSave>) {
        let dialog = gtk::FileChooserNative::new(
            Some("Save Program"),
            Some(self),
            gtk::FileChooserAction::Save,
            Some("_Save"),
            Some("_Cancel"),
        );
        dialog.set_modal(true);
        let extension = self
            .current_language()
            .and_then(|language| languages::extension(&language.id))
            .unwrap_or("txt");
        let current = self
            .file_name()
            .unwrap_or_else(|| format!("program.{extension}"));
        dialog.set_current_name(&current);
        let then = std::cell::RefCell::new(then);
        dialog.connect_response(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |dialog, response| {
                if response == gtk::ResponseType::Accept
                    && let Some(path) = dialog.file().and_then(|file| file.path())
                {
                    window.save_to(path, then.borrow_mut().take());
                }
                dialog.destroy();
            }
        ));
        dialog.show();
    }

    /// Writes the editor's text to `path`, then calls `then` if it worked.
    pub fn save_to(&self, path: PathBuf, then: Option<AfterSave>) {
        let buffer = self.buffer();
        let text = buffer
            .text(&buffer.start_iter(), &buffer.end_iter(), false)
            .to_string();
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = window)]
            self,
            async move {
                let file = gio::File::for_path(&path);
                let result = file
                    .replace_contents_future(
                        text.into_bytes(),
                        None,
                        false,
                        gio::FileCreateFlags::REPLACE_DESTINATION,
                    )
                    .await;
                if let Err((_, error)) = result {
                    window.show_toast(&format!(
                        "Cannot save {}: {error}. Try Save As with another folder.",
                        path.display()
                    ));
                    return;
                }
                if let Some(language) = languages::for_path(&path)
                    && window.current_language().is_none_or(|l| l.id != language)
                {
                    window.select_language(language);
                }
                window.imp().file.replace(Some(path));
                window.buffer().set_modified(false);
                window.update_title();
                window.save_draft();
                if let Some(then) = then {
                    then(&window);
                }
            }
        ));
    }

    /// Runs `then` at once, or after the user saved or discarded unsaved changes to a file.
    fn confirm_unsaved(&self, then: impl FnOnce(&Self) + 'static) {
        if !self.has_unsaved_file() {
            then(self);
            return;
        }
        let name = self.file_name().unwrap_or_else(|| "Untitled".to_owned());
        let dialog = adw::MessageDialog::new(
            Some(self),
            Some("Save Changes?"),
            Some(&format!(
                "{name} has unsaved changes. Changes which are not saved will be lost."
            )),
        );
        dialog.add_responses(&[
            ("cancel", "_Cancel"),
            ("discard", "_Discard"),
            ("save", "_Save"),
        ]);
        dialog.set_response_appearance("discard", adw::ResponseAppearance::Destructive);
        dialog.set_response_appearance("save", adw::ResponseAppearance::Suggested);
        dialog.set_default_response(Some("save"));
        dialog.set_close_response("cancel");
        let then = std::cell::RefCell::new(Some(Box::new(then) as AfterSave));
        dialog.connect_response(
            None,
            glib::clone!(
                #[weak(rename_to = window)]
                self,
                move |_, response| {
                    let Some(then) = then.borrow_mut().take() else {
                        return;
                    };
                    match response {
                        "discard" => then(&window),
                        "save" => {
                            let path = window.imp().file.borrow().clone();
                            match path {
                                Some(path) => window.save_to(path, Some(then)),
                                None => window.ask_save_path(Some(then)),
                            }
                        }
                        _ => {}
                    }
                }
            ),
        );
        dialog.present();
    }

    /// Saves the window's state; asks first when a file has unsaved changes.
    /// Closes the window without the unsaved-changes question: the draft keeps the text.
    pub(crate) fn close_without_asking(&self) {
        self.imp().close_confirmed.set(true);
        self.close();
    }

    pub(super) fn on_close_request(&self) -> glib::Propagation {
        let imp = self.imp();
        if !imp.close_confirmed.get() && self.has_unsaved_file() {
            self.confirm_unsaved(|window| {
                window.imp().close_confirmed.set(true);
                window.close();
            });
            return glib::Propagation::Stop;
        }
        if let Some(job) = imp.job.borrow().as_ref() {
            job.stop();
        }
        if let Some(source) = imp.draft_timeout.take() {
            source.remove();
        }
        self.save_draft();
        self.save_geometry();
        glib::Propagation::Proceed
    }
}
