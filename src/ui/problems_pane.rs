//! `KilnProblemsPane`: the problems of the last CHECK/RUN/BUILD as a list, and the compiler's raw
//! diagnostics behind an expander. Activating a row emits `problem-activated(line, column)`; the
//! window moves the editor's cursor there and marks the lines in the editor itself.

use std::cell::RefCell;
use std::sync::OnceLock;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::glib::subclass::Signal;
use gtk::{CompositeTemplate, glib};

use crate::protocol::{Problem, Severity};

mod imp {
    use super::*;

    #[derive(Debug, Default, CompositeTemplate)]
    #[template(resource = "/io/github/kiln/Kiln/ui/problems-pane.ui")]
    pub struct KilnProblemsPane {
        #[template_child]
        pub(super) stack: TemplateChild<gtk::Stack>,
        #[template_child]
        pub(super) list_box: TemplateChild<gtk::ListBox>,
        #[template_child]
        pub(super) diagnostics_expander: TemplateChild<gtk::Expander>,
        #[template_child]
        pub(super) diagnostics_view: TemplateChild<gtk::TextView>,
        /// The problems in the order of the rows.
        pub(super) problems: RefCell<Vec<Problem>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KilnProblemsPane {
        const NAME: &'static str = "KilnProblemsPane";
        type Type = super::KilnProblemsPane;
        type ParentType = gtk::Widget;

        fn class_init(klass: &mut Self::Class) {
            klass.bind_template();
            klass.set_layout_manager_type::<gtk::BinLayout>();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for KilnProblemsPane {
        fn signals() -> &'static [Signal] {
            static SIGNALS: OnceLock<Vec<Signal>> = OnceLock::new();
            SIGNALS.get_or_init(|| {
                vec![
                    Signal::builder("problem-activated")
                        .param_types([u32::static_type(), u32::static_type()])
                        .build(),
                ]
            })
        }

        fn constructed(&self) {
            self.parent_constructed();
            self.obj().setup_list();
        }

        fn dispose(&self) {
            self.dispose_template();
        }
    }

    impl WidgetImpl for KilnProblemsPane {}
}

glib::wrapper! {
    /// The problems pane of the window.
    pub struct KilnProblemsPane(ObjectSubclass<imp::KilnProblemsPane>)
        @extends gtk::Widget,
        @implements gtk::Buildable, gtk::ConstraintTarget;
}

impl Default for KilnProblemsPane {
    fn default() -> Self {
        glib::Object::new()
    }
}

impl KilnProblemsPane {
    fn setup_list(&self) {
        self.imp().list_box.connect_row_activated(glib::clone!(
            #[weak(rename_to = pane)]
            self,
            move |_, row| pane.on_row_activated(row)
        ));
    }

    fn on_row_activated(&self, row: &gtk::ListBoxRow) {
        let Ok(index) = usize::try_from(row.index()) else {
            return;
        };
        let problem = self.imp().problems.borrow().get(index).cloned();
        if let Some(problem) = problem {
            self.emit_by_name::<()>("problem-activated", &[&problem.line, &problem.column]);
        }
    }

    /// Calls `f(line, column)` when the user activates a problem (both from 1).
    pub fn connect_problem_activated<F: Fn(&Self, u32, u32) + 'static>(&self, f: F) {
        self.connect_closure(
            "problem-activated",
            false,
            glib::closure_local!(move |pane: &Self, line: u32, column: u32| f(pane, line, column)),
        );
    }

    /// Forgets the problems and diagnostics of the previous job.
    pub fn clear(&self) {
        let imp = self.imp();
        imp.problems.borrow_mut().clear();
        while let Some(row) = imp.list_box.first_child() {
            imp.list_box.remove(&row);
        }
        imp.diagnostics_view.buffer().set_text("");
        imp.diagnostics_expander.set_expanded(false);
        imp.stack.set_visible_child_name("empty");
    }

    /// Adds problems to the list.
    pub fn add_problems(&self, problems: &[Problem]) {
        let imp = self.imp();
        for problem in problems {
            imp.list_box.append(&problem_row(problem));
        }
        imp.problems.borrow_mut().extend_from_slice(problems);
        self.update_page();
    }

    /// Shows the compiler's own text.
    pub fn set_diagnostics(&self, text: &str) {
        self.imp().diagnostics_view.buffer().set_text(text);
        self.update_page();
    }

    fn update_page(&self) {
        let imp = self.imp();
        let buffer = imp.diagnostics_view.buffer();
        let has_diagnostics = buffer.char_count() > 0;
        imp.diagnostics_expander.set_visible(has_diagnostics);
        let has_anything = has_diagnostics || !imp.problems.borrow().is_empty();
        imp.stack
            .set_visible_child_name(if has_anything { "list" } else { "empty" });
    }

    /// The problems listed, in order.
    pub fn problems(&self) -> Vec<Problem> {
        self.imp().problems.borrow().clone()
    }

    /// The list of problems (one row per problem).
    pub fn list_box(&self) -> gtk::ListBox {
        self.imp().list_box.get()
    }

    /// The compiler's raw text.
    pub fn diagnostics(&self) -> String {
        let buffer = self.imp().diagnostics_view.buffer();
        buffer
            .text(&buffer.start_iter(), &buffer.end_iter(), false)
            .to_string()
    }
}

fn problem_row(problem: &Problem) -> adw::ActionRow {
    let (icon, severity) = match problem.severity {
        Severity::Error => ("dialog-error-symbolic", "Error"),
        Severity::Warning => ("dialog-warning-symbolic", "Warning"),
        Severity::Note => ("dialog-information-symbolic", "Note"),
    };
    let row = adw::ActionRow::builder()
        .title(glib::markup_escape_text(&problem.message).as_str())
        .subtitle(format!("Line {}, column {}", problem.line, problem.column))
        .activatable(true)
        .build();
    let image = gtk::Image::from_icon_name(icon);
    image.set_tooltip_text(Some(severity));
    if problem.severity == Severity::Error {
        image.add_css_class("error");
    } else if problem.severity == Severity::Warning {
        image.add_css_class("warning");
    }
    row.add_prefix(&image);
    row
}
