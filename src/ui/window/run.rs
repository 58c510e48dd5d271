//! Running a job (RUN, CHECK or BUILD) on the current server. A worker thread talks to the server with
//! the blocking `crate::client` and sends [`RunUpdate`]s over an `async_channel`; a local future on
//! the main loop drains them in batches (one text insertion per stream per batch, then a pause of a
//! frame) so a program that floods its output cannot freeze the window. Stop closes the
//! connection through a `Canceller`, which makes the server kill the job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{gio, glib};
use sourceview5::prelude::*;

use super::KilnWindow;
use crate::client::{Canceller, Client, ClientError, Event, JobResult, JobSpec};
use crate::protocol::{ErrorCode, Intent, Problem, Severity, Verdict};
use crate::ui::embedded::EmbeddedServer;
use crate::ui::output_pane::Stream;

/// Pause between two batches of updates: about one frame, so GTK can draw and handle input.
const BATCH_PAUSE: Duration = Duration::from_millis(16);

/// Most updates applied in one batch.
const BATCH_MAX: usize = 512;

/// Where a job goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The in-process server, started on first use.
    Embedded(Arc<EmbeddedServer>),
    /// A server elsewhere.
    Remote {
        /// `host:port`.
        addr: String,
        /// Its token, if one is stored.
        token: Option<String>,
    },
}

impl Target {
    /// A client for the target; starts the embedded server if needed. Blocks.
    pub(crate) fn client(&self) -> Result<Client, String> {
        match self {
            Target::Embedded(server) => {
                let endpoint = server.ensure_started()?;
                Ok(Client::new(endpoint.connect, Some(endpoint.token)))
            }
            Target::Remote { addr, token } => Ok(Client::new(addr.clone(), token.clone())),
        }
    }
}

/// What the worker thread reports.
#[derive(Debug)]
pub(crate) enum RunUpdate {
    /// Something the server sent.
    Event(Event),
    /// The job could not start or the connection broke.
    Failed(Failure),
}

/// Why a job did not end with a result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server could not be set up (embedded server failed to start).
    Setup(String),
    /// The server refused or the connection failed.
    Client(ClientError),
}

/// Lets the UI stop a job whose connection may not exist yet.
#[derive(Debug, Default)]
pub(crate) struct CancelFlag {
    requested: AtomicBool,
    canceller: Mutex<Option<Canceller>>,
}

impl CancelFlag {
    /// Stops the job now, or as soon as its connection exists.
    fn cancel(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Ok(canceller) = self.canceller.lock()
            && let Some(canceller) = canceller.as_ref()
        {
            canceller.cancel();
        }
    }

    /// Keeps the connection's canceller; cancels at once if Stop came first.
    fn register(&self, canceller: Canceller) {
        if let Ok(mut slot) = self.canceller.lock() {
            if self.requested.load(Ordering::SeqCst) {
                canceller.cancel();
            }
            *slot = Some(canceller);
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// The running job as the window sees it.
#[derive(Debug)]
pub(crate) struct JobControl {
    cancel: Arc<CancelFlag>,
    intent: Intent,
    server: String,
    language: String,
    started: Instant,
    /// Whether an artifact arrived (BUILD).
    got_artifact: bool,
}

impl JobControl {
    /// Stops the job (the server kills it when the connection closes).
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }
}

impl KilnWindow {
    /// Sends the editor's program to the current server as `intent` (RUN, CHECK or BUILD).
    pub(super) fn start_job(&self, intent: Intent) {
        if self.is_running() {
            return;
        }
        let imp = self.imp();
        let Some(language) = self.current_language() else {
            self.show_toast("No language to run: the server offers none. Pick another server.");
            return;
        };
        let buffer = self.buffer();
        let source = buffer
            .text(&buffer.start_iter(), &buffer.end_iter(), false)
            .to_string();
        let mut job = JobSpec::code(intent, &language.id, source);
        if intent == Intent::Run {
            job.stdin = imp.output_pane.input_text().into_bytes();
            match imp.output_pane.arguments() {
                Ok(args) => job.head.args = args,
                Err(reason) => {
                    self.show_toast(&format!(
                        "The arguments cannot be read ({reason}). Close the quote or remove it."
                    ));
                    return;
                }
            }
        }
        job.head.file_name = Some(self.job_file_name(&language.id));
        let (target, server) = self.current_target();

        imp.output_pane.clear();
        imp.problems_pane.clear();
        self.update_problem_marks(&[]);
        imp.problems_page.set_needs_attention(false);
        imp.problems_page.set_badge_number(0);
        imp.pane_stack.set_visible_child_name("output");
        let cancel = Arc::new(CancelFlag::default());
        imp.job.replace(Some(JobControl {
            cancel: Arc::clone(&cancel),
            intent,
            server: server.clone(),
            language: language.name.clone(),
            started: Instant::now(),
            got_artifact: false,
        }));
        let verb = if intent == Intent::Build {
            "Building"
        } else {
            "Running"
        };
        imp.status_label.set_label(&format!("{verb} on {server}…"));
        imp.status_details.set_label("");
        self.update_job_state();

        let (sender, receiver) = async_channel::unbounded();
        let spawned = std::thread::Builder::new()
            .name("kiln-job".into())
            .spawn(move || run_job(&target, &job, &cancel, &sender));
        if let Err(error) = spawned {
            self.on_failed(Failure::Setup(format!("cannot start a thread: {error}")));
            return;
        }
        self.drain_updates(receiver);
    }

    /// Applies updates until the worker thread is done; stops if the window goes away.
    fn drain_updates(&self, receiver: async_channel::Receiver<RunUpdate>) {
        let weak = self.downgrade();
        glib::spawn_future_local(async move {
            while let Ok(first) = receiver.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match receiver.try_recv() {
                        Ok(update) => batch.push(update),
                        Err(_) => break,
                    }
                }
                let Some(window) = weak.upgrade() else {
                    return;
                };
                window.apply_updates(batch);
                drop(window);
                glib::timeout_future(BATCH_PAUSE).await;
            }
        });
    }

    fn apply_updates(&self, batch: Vec<RunUpdate>) {
        let output = self.imp().output_pane.get();
        // Consecutive chunks of one stream become one insertion.
        let mut pending: Option<(Stream, Vec<u8>)> = None;
        let flush = |pending: &mut Option<(Stream, Vec<u8>)>| {
            if let Some((stream, bytes)) = pending.take() {
                output.append(stream, &bytes);
            }
        };
        for update in batch {
            let chunk = match &update {
                RunUpdate::Event(Event::Stdout(bytes)) => Some((Stream::Stdout, bytes)),
                RunUpdate::Event(Event::Stderr(bytes)) => Some((Stream::Stderr, bytes)),
                _ => None,
            };
            if let Some((stream, bytes)) = chunk {
                match &mut pending {
                    Some((current, buffer)) if *current == stream => {
                        buffer.extend_from_slice(bytes)
                    }
                    _ => {
                        flush(&mut pending);
                        pending = Some((stream, bytes.clone()));
                    }
                }
                continue;
            }
            flush(&mut pending);
            match update {
                RunUpdate::Event(Event::Diagnostics(text)) => {
                    self.imp().problems_pane.set_diagnostics(&text);
                }
                RunUpdate::Event(Event::Problems(problems)) => self.on_problems(&problems),
                RunUpdate::Event(Event::Artifact { name, data }) => self.on_artifact(&name, data),
                RunUpdate::Event(Event::Finished(result)) => self.on_finished(&result),
                RunUpdate::Failed(failure) => self.on_failed(failure),
                RunUpdate::Event(_) => {}
            }
        }
        flush(&mut pending);
    }

    fn on_problems(&self, problems: &[Problem]) {
        let imp = self.imp();
        imp.problems_pane.add_problems(problems);
        let all = imp.problems_pane.problems();
        self.update_problem_marks(&all);
        imp.problems_page
            .set_badge_number(u32::try_from(all.len()).unwrap_or(u32::MAX));
        imp.problems_page.set_needs_attention(!all.is_empty());
    }

    /// Marks the problems' lines in the editor: a gutter icon and an underline from the column.
    pub(super) fn update_problem_marks(&self, problems: &[Problem]) {
        let buffer = self.buffer();
        let (start, end) = buffer.bounds();
        for category in ["error", "warning", "note"] {
            buffer.remove_source_marks(&start, &end, Some(category));
        }
        buffer.remove_tag_by_name("problem", &start, &end);
        for problem in problems {
            let line = i32::try_from(problem.line.saturating_sub(1)).unwrap_or(0);
            let Some(mut from) = buffer.iter_at_line(line) else {
                continue;
            };
            let category = match problem.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "note",
            };
            buffer.create_source_mark(None, category, &from);
            let chars = from.chars_in_line();
            let column = i32::try_from(problem.column.saturating_sub(1)).unwrap_or(0);
            from.set_line_offset(column.min((chars - 1).max(0)));
            let mut to = from;
            if !to.ends_line() {
                to.forward_to_line_end();
            }
            if from == to {
                // An empty line or a problem at its end: underline the character before.
                from.backward_char();
            }
            buffer.apply_tag_by_name("problem", &from, &to);
        }
    }

    fn on_artifact(&self, name: &str, data: Vec<u8>) {
        if let Some(job) = self.imp().job.borrow_mut().as_mut() {
            job.got_artifact = true;
        }
        let file_name = std::path::Path::new(name).file_name().map_or_else(
            || "program".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let next = self.imp().next_save_path.borrow_mut().take();
        match next {
            Some(path) => self.write_artifact(gio::File::for_path(path), data),
            None => self.ask_artifact_path(&file_name, data),
        }
    }

    fn ask_artifact_path(&self, suggested: &str, data: Vec<u8>) {
        let dialog = gtk::FileChooserNative::new(
            Some("Save Compiled Program"),
            Some(self),
            gtk::FileChooserAction::Save,
            Some("_Save"),
            Some("_Cancel"),
        );
        dialog.set_modal(true);
        dialog.set_current_name(suggested);
        let data = std::cell::RefCell::new(Some(data));
        dialog.connect_response(glib::clone!(
            #[weak(rename_to = window)]
            self,
            move |dialog, response| {
                if response == gtk::ResponseType::Accept
                    && let Some(file) = dialog.file()
                    && let Some(data) = data.borrow_mut().take()
                {
                    window.write_artifact(file, data);
                }
                dialog.destroy();
            }
        ));
        dialog.show();
    }

    fn write_artifact(&self, file: gio::File, data: Vec<u8>) {
        let executable = data.starts_with(b"\x7fELF");
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = window)]
            self,
            async move {
                let name = file
                    .basename()
                    .map_or_else(String::new, |n| n.display().to_string());
                let result = file
                    .replace_contents_future(
                        data,
                        None,
                        false,
                        gio::FileCreateFlags::REPLACE_DESTINATION,
                    )
                    .await;
                match result {
                    Ok(_) => {
                        if executable && let Some(path) = file.path() {
                            use std::os::unix::fs::PermissionsExt;
                            let _ = std::fs::set_permissions(
                                &path,
                                std::fs::Permissions::from_mode(0o755),
                            );
                        }
                        window.show_toast(&format!("Saved the compiled program as {name}"));
                    }
                    Err((_, error)) => window.show_toast(&format!(
                        "Cannot save the compiled program as {name}: {error}. Pick another folder."
                    )),
                }
            }
        ));
    }

    fn on_finished(&self, result: &JobResult) {
        let imp = self.imp();
        let Some(job) = imp.job.take() else {
            return;
        };
        imp.output_pane.finish();
        self.update_job_state();
        imp.status_label
            .set_label(&verdict_label(result.verdict, job.intent));
        imp.status_details.set_label(&result_details(result));
        let has_problems =
            !imp.problems_pane.problems().is_empty() || !imp.problems_pane.diagnostics().is_empty();
        match result.verdict {
            Verdict::CompileError => {
                imp.pane_stack.set_visible_child_name("problems");
                self.show_toast("The program has errors: see Problems");
            }
            Verdict::TimeLimit => self.show_toast_with_action(
                &format!(
                    "Time limit exceeded on {}: the program ran too long and was stopped",
                    job.server
                ),
                "Preferences",
                "app.preferences",
            ),
            Verdict::MemoryLimit => self.show_toast_with_action(
                &format!(
                    "Memory limit exceeded on {}: the program was stopped",
                    job.server
                ),
                "Preferences",
                "app.preferences",
            ),
            Verdict::OutputLimit => self.show_toast(&format!(
                "Output limit reached on {}: the program wrote too much and was stopped",
                job.server
            )),
            Verdict::InternalError => self.show_toast(&format!(
                "{} failed on the server: {}",
                job.language,
                result.fields.get("message").unwrap_or("no reason given")
            )),
            Verdict::Ok if job.intent == Intent::Build && !job.got_artifact => {
                self.show_toast("The server built the program but sent no file to save");
            }
            _ if has_problems && result.verdict == Verdict::RuntimeError => {
                imp.problems_page.set_needs_attention(true);
            }
            _ => {}
        }
        tracing::debug!(verdict = %result.verdict, elapsed_ms = job.started.elapsed().as_millis() as u64, "job finished");
    }

    fn on_failed(&self, failure: Failure) {
        let imp = self.imp();
        let Some(job) = imp.job.take() else {
            return;
        };
        imp.output_pane.finish();
        self.update_job_state();
        imp.status_details.set_label("");
        if job.cancel.is_requested() {
            imp.status_label.set_label("Stopped");
            imp.output_pane.append_notice("\n[Stopped]\n");
            return;
        }
        imp.status_label.set_label("Failed");
        let (message, button) = failure_message(&failure, &job.server, &job.language);
        match button {
            Some((label, action)) => self.show_toast_with_action(&message, label, action),
            None => self.show_toast(&message),
        }
        imp.output_pane.append_notice(&format!("{message}\n"));
    }

    /// Stops the running job (the server kills it when the connection closes).
    pub(super) fn on_stop(&self) {
        if let Some(job) = self.imp().job.borrow().as_ref() {
            job.cancel.cancel();
            self.imp().status_label.set_label("Stopping…");
        }
    }

    /// The file name sent with the job: the real one, or `main.<ext>`.
    fn job_file_name(&self, language: &str) -> String {
        self.file_name().unwrap_or_else(|| {
            format!(
                "main.{}",
                crate::ui::languages::extension(language).unwrap_or("txt")
            )
        })
    }
}

/// The worker thread: sends the job and forwards what the server says.
fn run_job(
    target: &Target,
    job: &JobSpec,
    cancel: &CancelFlag,
    sender: &async_channel::Sender<RunUpdate>,
) {
    let send = |update| {
        // A closed channel means the window is gone; the job still ends with the connection.
        let _ = sender.send_blocking(update);
    };
    let client = match target.client() {
        Ok(client) => client.with_read_timeout(Some(Duration::from_secs(180))),
        Err(message) => return send(RunUpdate::Failed(Failure::Setup(message))),
    };
    if cancel.is_requested() {
        return send(RunUpdate::Failed(Failure::Setup("stopped".into())));
    }
    let response = match client.start(job) {
        Ok(response) => response,
        Err(error) => return send(RunUpdate::Failed(Failure::Client(error))),
    };
    if let Ok(canceller) = response.canceller() {
        cancel.register(canceller);
    }
    for event in response {
        match event {
            Ok(event) => send(RunUpdate::Event(event)),
            Err(error) => return send(RunUpdate::Failed(Failure::Client(error))),
        }
    }
}

/// The status line's verdict.
fn verdict_label(verdict: Verdict, intent: Intent) -> String {
    match verdict {
        Verdict::Ok if intent == Intent::Build => "Built".into(),
        Verdict::Ok if intent == Intent::Check => "No problems found".into(),
        Verdict::Ok => "Finished".into(),
        Verdict::Pong => "Reachable".into(),
        Verdict::CompileError => "Compile error".into(),
        Verdict::RuntimeError => "Runtime error".into(),
        Verdict::Signal => "Killed by a signal".into(),
        Verdict::TimeLimit => "Time limit exceeded".into(),
        Verdict::MemoryLimit => "Memory limit exceeded".into(),
        Verdict::OutputLimit => "Output limit exceeded".into(),
        Verdict::Cancelled => "Stopped".into(),
        Verdict::InternalError => "Server error".into(),
        Verdict::LockUnavailable => "Cluster lock unavailable".into(),
    }
}

/// Exit code or signal, run time and memory, as the status line shows them.
fn result_details(result: &JobResult) -> String {
    let mut parts = Vec::new();
    if let Some(code) = result.exit_code() {
        parts.push(format!("exit code {code}"));
    }
    if let Some(signal) = result.signal() {
        parts.push(format!("signal {signal}"));
    }
    if let Some(ms) = result.millis("run-ms") {
        parts.push(format_ms(ms));
    } else if let Some(ms) = result.millis("compile-ms") {
        parts.push(format!("compiled in {}", format_ms(ms)));
    }
    if let Some(kib) = result.fields.get_parsed::<u64>("max-rss-kib") {
        parts.push(format_kib(kib));
    }
    if let Some(truncated) = result.fields.get("truncated") {
        parts.push(format!("{truncated} truncated"));
    }
    parts.join(" · ")
}

fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

fn format_kib(kib: u64) -> String {
    if kib < 1024 {
        format!("{kib} KiB")
    } else {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }
}

/// What to tell the user about a failure, and the button that helps, if any.
fn failure_message(
    failure: &Failure,
    server: &str,
    language: &str,
) -> (String, Option<(&'static str, &'static str)>) {
    let preferences = Some(("Preferences", "app.preferences"));
    match failure {
        Failure::Setup(message) => (message.clone(), preferences),
        Failure::Client(error) => match error {
            ClientError::Resolve { .. } | ClientError::Connect { .. } => (
                format!(
                    "Cannot reach {server}: check that it is running and the address is right, or switch to This computer"
                ),
                None,
            ),
            ClientError::Server { code, message } => match code {
                ErrorCode::Unauthorized => (
                    format!("{server} refused the token: update it in Preferences › Servers"),
                    preferences,
                ),
                ErrorCode::Busy => (
                    format!("{server} is busy with other programs: try again in a moment"),
                    None,
                ),
                ErrorCode::UnsupportedLanguage => (
                    format!("{server} cannot run {language}: pick another language or server"),
                    None,
                ),
                ErrorCode::TooLarge => (
                    format!("The program or its input is too large for {server}: {message}"),
                    None,
                ),
                ErrorCode::Timeout => (
                    format!("{server} timed out waiting for the program: try again"),
                    None,
                ),
                ErrorCode::Unavailable => (
                    format!("{server} is shutting down: try again or switch servers"),
                    None,
                ),
                ErrorCode::BadRequest | ErrorCode::Internal => (
                    format!("{server} could not take the program: {message}"),
                    None,
                ),
            },
            ClientError::Io { .. } | ClientError::Truncated | ClientError::Protocol(_) => (
                format!("The connection to {server} broke before the program finished: {error}"),
                None,
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Fields;

    #[test]
    fn details_show_exit_code_time_and_memory() {
        let mut fields = Fields::new();
        fields
            .push("verdict", "runtime-error")
            .push("exit-code", 3)
            .push("run-ms", 1500)
            .push("max-rss-kib", 9216);
        let result = JobResult {
            verdict: Verdict::RuntimeError,
            fields,
        };
        assert_eq!(result_details(&result), "exit code 3 · 1.50 s · 9.0 MiB");
        assert_eq!(verdict_label(Verdict::Ok, Intent::Build), "Built");
    }

    #[test]
    fn failures_say_what_to_do() {
        let busy = Failure::Client(ClientError::Server {
            code: ErrorCode::Busy,
            message: "queue full".into(),
        });
        assert!(
            failure_message(&busy, "example:7878", "Python")
                .0
                .contains("try again")
        );
        let unauthorized = Failure::Client(ClientError::Server {
            code: ErrorCode::Unauthorized,
            message: String::new(),
        });
        let (text, button) = failure_message(&unauthorized, "example:7878", "Python");
        assert!(text.contains("Preferences"));
        assert_eq!(button, Some(("Preferences", "app.preferences")));
    }
}
