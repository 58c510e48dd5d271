//! `KilnWindow`: the main window — header bar (Run, Stop, language, server, Download, menu), the
//! GtkSourceView editor, and the Output/Problems panes with a status line. Split by concern:
//! `actions.rs` (window actions and their enabled states), `run.rs` (jobs on a server, streaming
//! updates), `files.rs` (new/open/save, the draft, the title, closing), `servers.rs` (the server
//! and language selectors). The panes are their own widgets (`output_pane.rs`,
//! `problems_pane.rs`, `cluster_pane.rs`, polled by `cluster.rs` for clustered servers); the servers are `embedded.rs` and `crate::client`.

mod actions;
mod cluster;
mod files;
mod run;
mod servers;

use std::cell::{Cell, OnceCell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{CompositeTemplate, gio, glib};
use sourceview5::prelude::*;

use super::application::KilnApplication;
use super::cluster_pane::KilnClusterPane;
use super::embedded::EmbeddedServer;
use super::output_pane::KilnOutputPane;
use super::problems_pane::KilnProblemsPane;
use crate::client::LanguageInfo;

mod imp {
    use super::*;

    #[derive(Debug, Default, CompositeTemplate)]
    #[template(resource = "/io/github/kiln/Kiln/ui/window.ui")]
    pub struct KilnWindow {
        #[template_child]
        pub(super) toast_overlay: TemplateChild<adw::ToastOverlay>,
        #[template_child]
        pub(super) window_title: TemplateChild<adw::WindowTitle>,
        #[template_child]
        pub(super) run_button: TemplateChild<gtk::Button>,
        #[template_child]
        pub(super) stop_button: TemplateChild<gtk::Button>,
        #[template_child]
        pub(super) build_button: TemplateChild<gtk::Button>,
        #[template_child]
        pub(super) language_dropdown: TemplateChild<gtk::DropDown>,
        #[template_child]
        pub(super) language_model: TemplateChild<gtk::StringList>,
        #[template_child]
        pub(super) server_dropdown: TemplateChild<gtk::DropDown>,
        #[template_child]
        pub(super) server_model: TemplateChild<gtk::StringList>,
        #[template_child]
        pub(super) search_bar: TemplateChild<gtk::SearchBar>,
        #[template_child]
        pub(super) search_entry: TemplateChild<gtk::SearchEntry>,
        #[template_child]
        pub(super) paned: TemplateChild<gtk::Paned>,
        #[template_child]
        pub(super) editor: TemplateChild<sourceview5::View>,
        #[template_child]
        pub(super) pane_stack: TemplateChild<adw::ViewStack>,
        #[template_child]
        pub(super) problems_page: TemplateChild<adw::ViewStackPage>,
        #[template_child]
        pub(super) output_pane: TemplateChild<KilnOutputPane>,
        #[template_child]
        pub(super) problems_pane: TemplateChild<KilnProblemsPane>,
        #[template_child]
        pub(super) cluster_page: TemplateChild<adw::ViewStackPage>,
        #[template_child]
        pub(super) cluster_pane: TemplateChild<KilnClusterPane>,
        #[template_child]
        pub(super) spinner: TemplateChild<gtk::Spinner>,
        #[template_child]
        pub(super) status_label: TemplateChild<gtk::Label>,
        #[template_child]
        pub(super) status_details: TemplateChild<gtk::Label>,

        /// The app's settings (set once by `KilnWindow::new`).
        pub(super) settings: OnceCell<gio::Settings>,
        /// The embedded server, shared with the application.
        pub(super) embedded: OnceCell<Arc<EmbeddedServer>>,
        /// The editor's buffer.
        pub(super) buffer: OnceCell<sourceview5::Buffer>,
        /// The languages of the current server, in the order of the language selector.
        pub(super) languages: RefCell<Vec<LanguageInfo>>,
        /// Remote server addresses, in the order of the server selector after "This computer".
        pub(super) servers: RefCell<Vec<String>>,
        /// The file being edited, if it has one.
        pub(super) file: RefCell<Option<PathBuf>>,
        /// The running job, if any.
        pub(super) job: RefCell<Option<run::JobControl>>,
        /// The last toast's text: what the user was last told (tests read it).
        pub(super) last_toast: RefCell<String>,
        /// The pending draft save.
        pub(super) draft_timeout: RefCell<Option<glib::SourceId>>,
        /// Where the next compiled program goes without asking (tests and automation).
        pub(super) next_save_path: RefCell<Option<PathBuf>>,
        /// Counts language-list requests so a slow answer for an old server is ignored.
        pub(super) info_generation: Cell<u64>,
        /// Tells the running cluster poller to stop (set when the server changes).
        pub(super) cluster_poll: RefCell<Option<Arc<AtomicBool>>>,
        /// Set while the selectors' models are rebuilt, so their change handlers stay quiet.
        pub(super) syncing: Cell<bool>,
        /// Set once the user agreed to close with unsaved changes.
        pub(super) close_confirmed: Cell<bool>,
        /// Search in the editor.
        pub(super) search_context: OnceCell<sourceview5::SearchContext>,
        /// The editor's font, as CSS; reloaded when the setting changes.
        pub(super) font_provider: OnceCell<gtk::CssProvider>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KilnWindow {
        const NAME: &'static str = "KilnWindow";
        type Type = super::KilnWindow;
        type ParentType = adw::ApplicationWindow;

        fn class_init(klass: &mut Self::Class) {
            KilnOutputPane::ensure_type();
            KilnProblemsPane::ensure_type();
            KilnClusterPane::ensure_type();
            sourceview5::View::ensure_type();
            klass.bind_template();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for KilnWindow {}

    impl WidgetImpl for KilnWindow {}

    impl WindowImpl for KilnWindow {
        fn close_request(&self) -> glib::Propagation {
            self.obj().on_close_request()
        }
    }

    impl ApplicationWindowImpl for KilnWindow {}
    impl AdwApplicationWindowImpl for KilnWindow {}
}

glib::wrapper! {
    /// The main window.
    pub struct KilnWindow(ObjectSubclass<imp::KilnWindow>)
        @extends gtk::Widget, gtk::Window, gtk::ApplicationWindow, adw::ApplicationWindow,
        @implements gio::ActionGroup, gio::ActionMap, gtk::Buildable,
            gtk::ConstraintTarget, gtk::Native, gtk::Root, gtk::ShortcutManager;
}

impl KilnWindow {
    /// A window of `app`, restored from the settings and the draft.
    pub fn new(app: &KilnApplication) -> Self {
        let window: Self = glib::Object::builder().property("application", app).build();
        let imp = window.imp();
        let _ = imp.settings.set(app.settings());
        let _ = imp.embedded.set(app.embedded());
        window.setup();
        window
    }

    fn setup(&self) {
        if super::config::is_development() {
            self.add_css_class("devel");
        }
        self.setup_geometry();
        self.setup_editor();
        self.setup_search();
        self.setup_actions();
        self.setup_panes();
        self.setup_servers();
        self.setup_draft();
        self.update_job_state();
    }

    pub(super) fn settings(&self) -> &gio::Settings {
        self.imp()
            .settings
            .get()
            .expect("KilnWindow::new sets the settings")
    }

    pub(super) fn embedded(&self) -> Arc<EmbeddedServer> {
        Arc::clone(
            self.imp()
                .embedded
                .get()
                .expect("KilnWindow::new sets the embedded server"),
        )
    }

    /// The editor's buffer.
    pub fn buffer(&self) -> sourceview5::Buffer {
        self.imp()
            .buffer
            .get()
            .expect("setup_editor creates the buffer")
            .clone()
    }

    fn setup_geometry(&self) {
        let settings = self.settings();
        self.set_default_size(
            settings.int("window-width").max(360),
            settings.int("window-height").max(400),
        );
        if settings.boolean("window-maximized") {
            self.maximize();
        }
    }

    fn save_geometry(&self) {
        let settings = self.settings();
        let (width, height) = self.default_size();
        let _ = settings.set_int("window-width", width);
        let _ = settings.set_int("window-height", height);
        let _ = settings.set_boolean("window-maximized", self.is_maximized());
    }

    fn setup_editor(&self) {
        let imp = self.imp();
        let buffer = sourceview5::Buffer::new(None::<&gtk::TextTagTable>);
        buffer.set_highlight_matching_brackets(true);
        buffer.set_highlight_syntax(true);
        imp.editor.set_buffer(Some(&buffer));
        let _ = imp.buffer.set(buffer.clone());

        buffer.create_tag(
            Some("problem"),
            &[
                ("underline", &gtk::pango::Underline::Error),
                (
                    "underline-rgba",
                    &gtk::gdk::RGBA::new(0.88, 0.11, 0.14, 1.0),
                ),
            ],
        );
        for (category, icon) in [
            ("error", "dialog-error-symbolic"),
            ("warning", "dialog-warning-symbolic"),
            ("note", "dialog-information-symbolic"),
        ] {
            let attributes = sourceview5::MarkAttributes::new();
            attributes.set_icon_name(icon);
            imp.editor.set_mark_attributes(category, &attributes, 10);
        }

        let settings = self.settings();
        settings
            .bind("tab-width", &*imp.editor, "tab-width")
            .get_only()
            .build();
        settings
            .bind("tab-width", &*imp.editor, "indent-width")
            .get_only()
            .build();
        settings.connect_changed(
            Some("editor-font"),
            glib::clone!(
                #[weak(rename_to = window)]
                self,
                move |_, _| window.update_editor_font()
            ),
        );
        self.update_editor_font();

        let style_manager = adw::StyleManager::default();
        style_manager.connect_dark_notify(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| window.update_style_scheme()
        ));
        self.update_style_scheme();
    }

    /// The editor's font from the settings, through CSS (the way GTK 4 sets a widget's font).
    fn update_editor_font(&self) {
        let font = self.settings().string("editor-font");
        let description = gtk::pango::FontDescription::from_string(&font);
        let mut css = String::from("textview.kiln-editor {");
        if let Some(family) = description.family() {
            css.push_str(&format!(" font-family: \"{}\";", family.replace('"', "")));
        }
        if description.size() > 0 {
            css.push_str(&format!(
                " font-size: {}pt;",
                description.size() / gtk::pango::SCALE
            ));
        }
        css.push_str(" }");
        let editor = &self.imp().editor;
        let provider = self.imp().font_provider.get_or_init(|| {
            let provider = gtk::CssProvider::new();
            editor.add_css_class("kiln-editor");
            #[allow(deprecated)] // Widget-level providers are the only per-widget way in GTK 4.8.
            editor
                .style_context()
                .add_provider(&provider, gtk::STYLE_PROVIDER_PRIORITY_APPLICATION);
            provider
        });
        provider.load_from_data(&css);
    }

    /// Light or dark highlighting, following the system preference.
    fn update_style_scheme(&self) {
        let dark = adw::StyleManager::default().is_dark();
        let manager = sourceview5::StyleSchemeManager::default();
        let scheme = manager
            .scheme(if dark { "Adwaita-dark" } else { "Adwaita" })
            .or_else(|| manager.scheme(if dark { "classic-dark" } else { "classic" }));
        self.buffer().set_style_scheme(scheme.as_ref());
    }

    /// Highlighting for the language `id`.
    pub(super) fn update_highlighting(&self, id: &str) {
        let language = super::languages::sourceview_id(id)
            .and_then(|sv| sourceview5::LanguageManager::default().language(sv));
        self.buffer().set_language(language.as_ref());
    }

    fn setup_search(&self) {
        let imp = self.imp();
        let context =
            sourceview5::SearchContext::new(&self.buffer(), None::<&sourceview5::SearchSettings>);
        context.set_highlight(true);
        let _ = imp.search_context.set(context.clone());
        imp.search_bar.connect_entry(&*imp.search_entry);
        imp.search_bar.set_key_capture_widget(None::<&gtk::Widget>);
        imp.search_entry.connect_search_changed(glib::clone!(
            #[weak]
            context,
            move |entry| {
                context
                    .settings()
                    .set_search_text(Some(entry.text().as_str()).filter(|t| !t.is_empty()));
            }
        ));
        imp.search_entry.connect_activate(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| window.on_find_next()
        ));
        imp.search_entry.connect_stop_search(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_| {
                window.imp().search_bar.set_search_mode(false);
                window.imp().editor.grab_focus();
            }
        ));
    }

    fn on_find_next(&self) {
        let Some(context) = self.imp().search_context.get() else {
            return;
        };
        let buffer = self.buffer();
        let cursor = buffer.iter_at_mark(&buffer.get_insert());
        if let Some((start, end, _wrapped)) = context.forward(&cursor) {
            let mut after = start;
            after.forward_char();
            buffer.select_range(&end, &start);
            self.imp()
                .editor
                .scroll_to_iter(&mut after, 0.1, false, 0.0, 0.0);
        }
    }

    fn setup_panes(&self) {
        let imp = self.imp();
        imp.problems_pane.connect_problem_activated(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |_, line, column| window.on_problem_activated(line, column)
        ));
        self.settings().connect_changed(
            Some("output-wrap"),
            glib::clone!(
                #[weak(rename_to = window)]
                self,
                move |settings, key| window.imp().output_pane.set_wrap(settings.boolean(key))
            ),
        );
        imp.output_pane
            .set_wrap(self.settings().boolean("output-wrap"));
    }

    /// Moves the cursor to a problem's line and column (both from 1) and focuses the editor.
    fn on_problem_activated(&self, line: u32, column: u32) {
        let buffer = self.buffer();
        let line = i32::try_from(line.saturating_sub(1)).unwrap_or(0);
        let Some(mut iter) = buffer.iter_at_line(line) else {
            return;
        };
        let chars = iter.chars_in_line();
        let offset = i32::try_from(column.saturating_sub(1)).unwrap_or(0);
        iter.set_line_offset(offset.min((chars - 1).max(0)));
        buffer.place_cursor(&iter);
        let editor = &self.imp().editor;
        editor.scroll_to_iter(&mut iter, 0.1, false, 0.0, 0.0);
        editor.grab_focus();
    }

    /// Shows a toast.
    pub(super) fn show_toast(&self, title: &str) {
        self.imp().last_toast.replace(title.to_owned());
        let toast = adw::Toast::new(&glib::markup_escape_text(title));
        toast.set_timeout(6);
        self.imp().toast_overlay.add_toast(toast);
    }

    /// Shows a toast with a button that activates `action`.
    pub(super) fn show_toast_with_action(&self, title: &str, button: &str, action: &str) {
        self.imp().last_toast.replace(title.to_owned());
        let toast = adw::Toast::builder()
            .title(glib::markup_escape_text(title).as_str())
            .button_label(button)
            .action_name(action)
            .timeout(8)
            .build();
        self.imp().toast_overlay.add_toast(toast);
    }

    // Accessors for tests and automation: they hand out the real widgets so tests drive them the
    // way a user would (clicking, typing, selecting) instead of calling handlers.

    /// The text of the last toast shown, empty if none was.
    pub fn last_toast(&self) -> String {
        self.imp().last_toast.borrow().clone()
    }

    /// The Run button.
    pub fn run_button(&self) -> gtk::Button {
        self.imp().run_button.get()
    }

    /// The Stop button.
    pub fn stop_button(&self) -> gtk::Button {
        self.imp().stop_button.get()
    }

    /// The Download compiled program button.
    pub fn build_button(&self) -> gtk::Button {
        self.imp().build_button.get()
    }

    /// The language selector.
    pub fn language_dropdown(&self) -> gtk::DropDown {
        self.imp().language_dropdown.get()
    }

    /// The server selector.
    pub fn server_dropdown(&self) -> gtk::DropDown {
        self.imp().server_dropdown.get()
    }

    /// The code editor.
    pub fn editor(&self) -> sourceview5::View {
        self.imp().editor.get()
    }

    /// The Output pane.
    pub fn output_pane(&self) -> KilnOutputPane {
        self.imp().output_pane.get()
    }

    /// The Problems pane.
    pub fn problems_pane(&self) -> KilnProblemsPane {
        self.imp().problems_pane.get()
    }

    /// The status line's main text (verdict).
    pub fn status_text(&self) -> String {
        self.imp().status_label.label().to_string()
    }

    /// The status line's details (exit code, time, memory).
    pub fn status_details(&self) -> String {
        self.imp().status_details.label().to_string()
    }

    /// The window's title as shown (file name and unsaved marker).
    pub fn title_text(&self) -> String {
        self.imp().window_title.title().to_string()
    }

    /// Whether a job is running.
    pub fn is_running(&self) -> bool {
        self.imp().job.borrow().is_some()
    }

    /// Saves the next compiled program to `path` without showing the save dialog (for tests and
    /// automation; the dialog is the normal way).
    pub fn set_next_save_path(&self, path: Option<PathBuf>) {
        self.imp().next_save_path.replace(path);
    }
}
