//! `KilnOutputPane`: what a program writes (stdout plain, stderr in a warning colour) as it
//! streams, the Input area whose text becomes the program's stdin, and the Arguments field. The
//! window (`window/run.rs`) feeds it batches of bytes; this file keeps the view responsive: bytes
//! are decoded as UTF-8 across chunk boundaries, the shown text is capped at [`SHOWN_LIMIT`] with
//! a notice, and the view follows new output unless the user scrolled up.

use std::cell::{Cell, RefCell};

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{CompositeTemplate, glib};

/// Bytes of output the pane shows before it stops adding more; a text view with many megabytes
/// of text becomes slow to lay out, and nobody reads that much in a pane.
pub const SHOWN_LIMIT: usize = 1024 * 1024;

/// Which stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

mod imp {
    use super::*;

    #[derive(Debug, Default, CompositeTemplate)]
    #[template(resource = "/io/github/kiln/Kiln/ui/output-pane.ui")]
    pub struct KilnOutputPane {
        /// The direct child; bound so `dispose_template` unparents it.
        #[template_child]
        pub(super) paned: TemplateChild<gtk::Paned>,
        #[template_child]
        pub(super) stack: TemplateChild<gtk::Stack>,
        #[template_child]
        pub(super) scroller: TemplateChild<gtk::ScrolledWindow>,
        #[template_child]
        pub(super) text_view: TemplateChild<gtk::TextView>,
        #[template_child]
        pub(super) input_view: TemplateChild<gtk::TextView>,
        #[template_child]
        pub(super) arguments_entry: TemplateChild<gtk::Entry>,
        /// Bytes of text shown since the last clear.
        pub(super) shown: Cell<usize>,
        /// Bytes received but not shown because of the cap.
        pub(super) hidden: Cell<u64>,
        /// Incomplete UTF-8 sequences at the end of each stream's last chunk.
        pub(super) pending: RefCell<[Vec<u8>; 2]>,
        /// Whether the view scrolls to new output (false once the user scrolls up).
        pub(super) follow: Cell<bool>,
        /// Set while the pane itself moves the view, so that move does not count as the user's.
        pub(super) scrolling: Cell<bool>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KilnOutputPane {
        const NAME: &'static str = "KilnOutputPane";
        type Type = super::KilnOutputPane;
        type ParentType = gtk::Widget;

        fn class_init(klass: &mut Self::Class) {
            klass.bind_template();
            klass.set_layout_manager_type::<gtk::BinLayout>();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for KilnOutputPane {
        fn constructed(&self) {
            self.parent_constructed();
            self.follow.set(true);
            let obj = self.obj();
            obj.setup_tags();
            obj.setup_follow();
        }

        fn dispose(&self) {
            self.dispose_template();
        }
    }

    impl WidgetImpl for KilnOutputPane {}
}

glib::wrapper! {
    /// The output and input pane of the window.
    pub struct KilnOutputPane(ObjectSubclass<imp::KilnOutputPane>)
        @extends gtk::Widget,
        @implements gtk::Buildable, gtk::ConstraintTarget;
}

impl Default for KilnOutputPane {
    fn default() -> Self {
        glib::Object::new()
    }
}

impl KilnOutputPane {
    fn setup_tags(&self) {
        let buffer = self.imp().text_view.buffer();
        buffer.create_tag(Some("stderr"), &[]);
        buffer.create_tag(
            Some("notice"),
            &[("style", &gtk::pango::Style::Italic), ("weight", &600i32)],
        );
        let style_manager = adw::StyleManager::default();
        self.update_tag_colors(style_manager.is_dark());
        style_manager.connect_dark_notify(glib::clone!(
            #[weak(rename_to = pane)]
            self,
            move |manager| pane.update_tag_colors(manager.is_dark())
        ));
    }

    /// Stderr in the HIG's error colour, light or dark, so it stays readable on both.
    fn update_tag_colors(&self, dark: bool) {
        let table = self.imp().text_view.buffer().tag_table();
        if let Some(tag) = table.lookup("stderr") {
            tag.set_foreground(Some(if dark { "#ff7b63" } else { "#c01c28" }));
        }
        if let Some(tag) = table.lookup("notice") {
            tag.set_foreground(Some(if dark { "#f8e45c" } else { "#9c6e03" }));
        }
    }

    /// Follows new output while the user is at the end. The text view lays out new lines in idle
    /// steps, so the adjustment's bounds grow several times per append: following means moving to
    /// the end each time they change, and only a scroll the pane did not make itself may stop it.
    fn setup_follow(&self) {
        let adjustment = self.imp().scroller.vadjustment();
        adjustment.connect_changed(glib::clone!(
            #[weak(rename_to = pane)]
            self,
            move |adjustment| {
                if pane.imp().follow.get() {
                    pane.scroll_to_end(adjustment);
                }
            }
        ));
        adjustment.connect_value_changed(glib::clone!(
            #[weak(rename_to = pane)]
            self,
            move |adjustment| {
                let imp = pane.imp();
                if imp.scrolling.get() {
                    return;
                }
                let at_end =
                    adjustment.value() + adjustment.page_size() >= adjustment.upper() - 24.0;
                imp.follow.set(at_end);
            }
        ));
    }

    fn scroll_to_end(&self, adjustment: &gtk::Adjustment) {
        let imp = self.imp();
        let end = (adjustment.upper() - adjustment.page_size()).max(adjustment.lower());
        if adjustment.value() < end {
            imp.scrolling.set(true);
            adjustment.set_value(end);
            imp.scrolling.set(false);
        }
    }

    /// Empties the output for a new job (the input stays).
    pub fn clear(&self) {
        let imp = self.imp();
        imp.text_view.buffer().set_text("");
        imp.shown.set(0);
        imp.hidden.set(0);
        imp.follow.set(true);
        *imp.pending.borrow_mut() = [Vec::new(), Vec::new()];
        imp.stack.set_visible_child_name("output");
    }

    /// Adds bytes a program wrote.
    pub fn append(&self, stream: Stream, bytes: &[u8]) {
        let imp = self.imp();
        let text = {
            let mut pending = imp.pending.borrow_mut();
            decode_stream(&mut pending[stream as usize], bytes)
        };
        self.append_text(stream, &text);
    }

    fn append_text(&self, stream: Stream, text: &str) {
        if text.is_empty() {
            return;
        }
        let imp = self.imp();
        let room = SHOWN_LIMIT.saturating_sub(imp.shown.get());
        if room == 0 {
            imp.hidden.set(imp.hidden.get() + text.len() as u64);
            return;
        }
        let shown = floor_char_boundary(text, room);
        self.insert(
            &text[..shown],
            (stream == Stream::Stderr).then_some("stderr"),
        );
        imp.shown.set(imp.shown.get() + shown);
        if shown < text.len() {
            imp.hidden
                .set(imp.hidden.get() + (text.len() - shown) as u64);
            // Counts as shown so the notice is written once.
            imp.shown.set(SHOWN_LIMIT);
            self.append_notice(&format!(
                "\n[Output truncated: the pane shows the first {} KiB]\n",
                SHOWN_LIMIT / 1024
            ));
        }
    }

    /// Adds a line of Kiln's own (not the program's), set apart from the program's output.
    pub fn append_notice(&self, text: &str) {
        self.insert(text, Some("notice"));
    }

    /// Writes out what is left of incomplete UTF-8 and a summary of hidden output; call when the
    /// job ends.
    pub fn finish(&self) {
        let imp = self.imp();
        let rests = std::mem::take(&mut *imp.pending.borrow_mut());
        for (index, rest) in rests.iter().enumerate() {
            let stream = if index == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            self.append_text(stream, &String::from_utf8_lossy(rest));
        }
        if imp.hidden.get() > 0 {
            self.append_notice(&format!(
                "[{} more bytes of output were not shown]\n",
                imp.hidden.get()
            ));
        }
    }

    fn insert(&self, text: &str, tag: Option<&str>) {
        let imp = self.imp();
        let buffer = imp.text_view.buffer();
        let mut end = buffer.end_iter();
        match tag {
            Some(tag) => buffer.insert_with_tags_by_name(&mut end, text, &[tag]),
            None => buffer.insert(&mut end, text),
        }
        if imp.follow.get() {
            self.scroll_to_end(&imp.scroller.vadjustment());
        }
    }

    /// All the text the pane shows (program output and notices).
    pub fn text(&self) -> String {
        let buffer = self.imp().text_view.buffer();
        buffer
            .text(&buffer.start_iter(), &buffer.end_iter(), false)
            .to_string()
    }

    /// The text of the Input area, sent as stdin.
    pub fn input_text(&self) -> String {
        let buffer = self.imp().input_view.buffer();
        buffer
            .text(&buffer.start_iter(), &buffer.end_iter(), false)
            .to_string()
    }

    /// The program's arguments from the Arguments field, split as a shell would split them
    /// (quotes keep spaces), or why they cannot be split.
    pub fn arguments(&self) -> Result<Vec<String>, String> {
        let text = self.imp().arguments_entry.text();
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        glib::shell_parse_argv(text.as_str())
            .map(|args| {
                args.into_iter()
                    .map(|arg| arg.to_string_lossy().into_owned())
                    .collect()
            })
            .map_err(|error| error.message().to_owned())
    }

    /// The Arguments field's text as typed.
    pub fn arguments_text(&self) -> String {
        self.imp().arguments_entry.text().to_string()
    }

    /// Puts back the Input area's and Arguments field's text (from the draft).
    pub fn restore_input(&self, input: &str, arguments: &str) {
        let imp = self.imp();
        imp.input_view.buffer().set_text(input);
        imp.arguments_entry.set_text(arguments);
    }

    /// Calls `changed` whenever the Input area or the Arguments field changes.
    pub fn connect_input_changed(&self, changed: impl Fn() + Clone + 'static) {
        let imp = self.imp();
        let on_input = changed.clone();
        imp.input_view.buffer().connect_changed(move |_| on_input());
        imp.arguments_entry.connect_changed(move |_| changed());
    }

    /// The Arguments field.
    pub fn arguments_entry(&self) -> gtk::Entry {
        self.imp().arguments_entry.get()
    }

    /// The Input area's text view.
    pub fn input_view(&self) -> gtk::TextView {
        self.imp().input_view.get()
    }

    /// The output text view.
    pub fn output_view(&self) -> gtk::TextView {
        self.imp().text_view.get()
    }

    /// Wraps long lines or scrolls sideways.
    pub fn set_wrap(&self, wrap: bool) {
        self.imp().text_view.set_wrap_mode(if wrap {
            gtk::WrapMode::WordChar
        } else {
            gtk::WrapMode::None
        });
    }
}

/// Appends `bytes` to `pending` and returns the text that is complete, keeping an incomplete
/// UTF-8 sequence at the end for the next chunk; invalid bytes become U+FFFD.
fn decode_stream(pending: &mut Vec<u8>, bytes: &[u8]) -> String {
    pending.extend_from_slice(bytes);
    let keep = incomplete_tail(pending);
    let tail = pending.split_off(pending.len() - keep);
    let text = String::from_utf8_lossy(pending).into_owned();
    *pending = tail;
    text
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// The largest index at most `index` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    (0..=index)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_joined() {
        let bytes = "héllo → wörld".as_bytes();
        for split in 0..bytes.len() {
            let mut pending = Vec::new();
            let mut text = decode_stream(&mut pending, &bytes[..split]);
            text.push_str(&decode_stream(&mut pending, &bytes[split..]));
            assert_eq!(text, "héllo → wörld", "split at {split}");
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut pending = Vec::new();
        assert_eq!(decode_stream(&mut pending, b"a\xffb\n"), "a\u{fffd}b\n");
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("abc", 10), 3);
    }
}
