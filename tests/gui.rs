//! In-process tests of the desktop app: they build the real application and window, type programs
//! into the editor, click the real buttons and wait (iterating the main loop) for what a user would
//! see. GTK must be used from one thread, so this file has its own `main` (`harness = false`) that
//! runs the scenarios in order. Run under Xvfb:
//!
//! `xvfb-run -a -s "-screen 0 1280x800x24" env GSK_RENDERER=cairo cargo test --test gui`
//!
//! Without a display the tests are skipped (exit 0) unless `KILN_GUI_TESTS_REQUIRED=1`.
//! Arguments are substrings of scenario names to run only those.

mod cluster_support;

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use adw::prelude::*;
use gtk::{gio, glib};
use kiln::server::{ServerConfig, Token};
use kiln::ui::{KilnApplication, KilnPreferencesDialog, KilnWindow};
use sourceview5::prelude::*;

/// Longest wait for a program to finish; generous for a loaded CI machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

type Scenario = fn(&Context) -> Result<(), String>;

struct Context {
    app: KilnApplication,
    window: KilnWindow,
    dir: PathBuf,
}

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !has_display {
        if std::env::var_os("KILN_GUI_TESTS_REQUIRED").is_some() {
            eprintln!("gui tests: no display; run them under xvfb-run");
            return ExitCode::FAILURE;
        }
        eprintln!("gui tests: SKIPPED (no DISPLAY; run under xvfb-run, see tests/gui.rs)");
        return ExitCode::SUCCESS;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // SAFETY: no other thread exists yet; GLib reads these once at first use.
    unsafe {
        std::env::set_var("XDG_DATA_HOME", dir.path().join("data"));
        std::env::set_var("XDG_CONFIG_HOME", dir.path().join("config"));
        std::env::set_var("XDG_CACHE_HOME", dir.path().join("cache"));
        std::env::set_var("GSETTINGS_BACKEND", "memory");
        std::env::set_var("GTK_A11Y", "none");
    }
    let settings = kiln::ui::init().expect("GTK starts");
    let app = KilnApplication::new(settings, gio::ApplicationFlags::NON_UNIQUE);
    app.register(gio::Cancellable::NONE)
        .expect("application registers");
    app.activate();
    let window = app.main_window().expect("activate opens the window");
    let context = Context {
        app,
        window,
        dir: dir.path().to_owned(),
    };

    let scenarios: &[(&str, Scenario)] = &[
        (
            "window_starts_with_languages_of_embedded_server",
            window_starts_with_languages,
        ),
        ("run_shows_stdout_and_stderr", run_shows_stdout_and_stderr),
        (
            "stdin_comes_from_the_input_area",
            stdin_comes_from_the_input_area,
        ),
        (
            "arguments_field_reaches_the_program",
            arguments_field_reaches_the_program,
        ),
        (
            "output_follows_new_lines_unless_scrolled_up",
            output_follows_unless_scrolled_up,
        ),
        (
            "syntax_error_lists_a_problem_that_moves_the_cursor",
            syntax_error_lists_a_problem,
        ),
        (
            "check_finds_problems_without_running",
            check_finds_problems_without_running,
        ),
        ("stop_ends_an_endless_program", stop_ends_an_endless_program),
        (
            "build_writes_the_compiled_program",
            build_writes_the_compiled_program,
        ),
        (
            "flood_of_output_keeps_the_window_responsive",
            flood_keeps_window_responsive,
        ),
        ("draft_is_saved_to_the_data_dir", draft_is_saved),
        (
            "remote_server_added_in_preferences_runs_programs",
            remote_server_runs_programs,
        ),
        ("open_edit_save_and_new_files", open_edit_save_and_new_files),
        ("time_limit_is_reported", time_limit_is_reported),
        ("preferences_apply_to_editor_and_output", preferences_apply),
        (
            "menu_opens_shortcuts_about_and_preferences",
            menu_windows_open,
        ),
        (
            "unreachable_server_says_what_to_do",
            unreachable_server_says_what_to_do,
        ),
        (
            "busy_server_says_to_try_again",
            busy_server_says_to_try_again,
        ),
        (
            "cluster_view_shows_nodes_leader_and_messages",
            cluster_view_shows_nodes_leader_and_messages,
        ),
        ("screenshots_when_asked", screenshots),
    ];
    let mut failed = 0;
    let mut ran = 0;
    for (name, scenario) in scenarios {
        if !filters.is_empty() && !filters.iter().any(|filter| name.contains(filter.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        match scenario(&context) {
            Ok(()) => eprintln!("test {name} ... ok ({} ms)", started.elapsed().as_millis()),
            Err(message) => {
                failed += 1;
                eprintln!("test {name} ... FAILED: {message}");
                eprintln!(
                    "  output pane: {:?}",
                    tail(&context.window.output_pane().text())
                );
                eprintln!(
                    "  status: {} | {}",
                    context.window.status_text(),
                    context.window.status_details()
                );
            }
        }
        // Let toasts and pending updates settle so one scenario does not leak into the next.
        wait_until(Duration::from_millis(100), || false);
    }
    eprintln!("gui tests: {} passed, {failed} failed", ran - failed);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(400);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[start..]
}

/// Iterates the main loop until `done` or the timeout; returns whether `done` became true.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let context = glib::MainContext::default();
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if !context.iteration(false) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// Replaces the editor's text the way typing does (a user action, interactive insert).
fn type_program(window: &KilnWindow, text: &str) {
    let buffer = window.buffer();
    window.editor().grab_focus();
    buffer.begin_user_action();
    let (mut start, mut end) = buffer.bounds();
    buffer.delete_interactive(&mut start, &mut end, true);
    buffer.insert_interactive_at_cursor(text, true);
    buffer.end_user_action();
}

fn set_input(window: &KilnWindow, text: &str) {
    window.output_pane().input_view().buffer().set_text(text);
}

/// Clicks a button as a user would, after checking it is clickable.
fn click(button: &gtk::Button, what: &str) -> Result<(), String> {
    check(button.is_sensitive(), || format!("{what} is not clickable"))?;
    button.emit_clicked();
    Ok(())
}

/// Clicks Run (or `button`) and waits for the job to end.
fn run_and_wait(window: &KilnWindow, button: &gtk::Button, what: &str) -> Result<(), String> {
    click(button, what)?;
    check(window.is_running(), || {
        format!("{what} did not start a job")
    })?;
    check(wait_until(JOB_TIMEOUT, || !window.is_running()), || {
        format!("the job did not end within {JOB_TIMEOUT:?}")
    })
}

fn language_names(window: &KilnWindow) -> Vec<String> {
    let model = window.language_dropdown().model().expect("language model");
    (0..model.n_items())
        .filter_map(|i| model.item(i).and_downcast::<gtk::StringObject>())
        .map(|item| item.string().to_string())
        .collect()
}

fn window_starts_with_languages(context: &Context) -> Result<(), String> {
    let window = &context.window;
    // The embedded server answers INFO with its version; the placeholder has none.
    let ready = wait_until(JOB_TIMEOUT, || {
        window
            .language_dropdown()
            .tooltip_text()
            .is_some_and(|tip| tip.chars().any(|c| c.is_ascii_digit()))
    });
    check(ready, || {
        "the embedded server's languages never arrived".into()
    })?;
    check(
        language_names(window).contains(&"Python".to_owned()),
        || format!("languages: {:?}", language_names(window)),
    )?;
    let server = window
        .server_dropdown()
        .selected_item()
        .and_downcast::<gtk::StringObject>();
    check(
        server.is_some_and(|s| s.string() == "This computer"),
        || "the server selector does not show This computer".into(),
    )?;
    check(window.run_button().is_sensitive(), || {
        "Run is not clickable".into()
    })?;
    check(!window.stop_button().is_sensitive(), || {
        "Stop is clickable while idle".into()
    })
}

fn run_shows_stdout_and_stderr(context: &Context) -> Result<(), String> {
    let window = &context.window;
    type_program(
        window,
        "import sys\nprint('hello from kiln')\nprint('oops on stderr', file=sys.stderr)\nsys.exit(3)\n",
    );
    run_and_wait(window, &window.run_button(), "Run")?;
    let output = window.output_pane().text();
    check(output.contains("hello from kiln"), || {
        format!("no stdout in {output:?}")
    })?;
    check(output.contains("oops on stderr"), || {
        format!("no stderr in {output:?}")
    })?;
    check(window.status_text() == "Runtime error", || {
        format!("status {:?}", window.status_text())
    })?;
    let details = window.status_details();
    check(
        details.contains("exit code 3") && details.contains("ms"),
        || format!("details {details:?}"),
    )?;

    type_program(window, "print('second run')\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    let output = window.output_pane().text();
    check(
        output.contains("second run") && !output.contains("hello from kiln"),
        || format!("the output was not cleared: {output:?}"),
    )?;
    check(window.status_text() == "Finished", || {
        format!("status {:?}", window.status_text())
    })
}

fn stdin_comes_from_the_input_area(context: &Context) -> Result<(), String> {
    let window = &context.window;
    type_program(
        window,
        "name = input()\nage = input()\nprint(f'Hello, {name} ({age})')\n",
    );
    set_input(window, "Ada\n36\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    set_input(window, "");
    let output = window.output_pane().text();
    check(output.contains("Hello, Ada (36)"), || {
        format!("output {output:?}")
    })
}

fn arguments_field_reaches_the_program(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let entry = window.output_pane().arguments_entry();
    type_program(window, "import sys\nprint(sys.argv[1:])\n");
    entry.set_text(r#"-n 3 "two words" it\'s"#);
    run_and_wait(window, &window.run_button(), "Run")?;
    let output = window.output_pane().text();
    check(
        output.contains("['-n', '3', 'two words', \"it's\"]"),
        || format!("output {output:?}"),
    )?;

    // An open quote is the user's to fix: nothing runs and a toast says what is wrong.
    entry.set_text(r#"one "two"#);
    window.output_pane().clear();
    click(&window.run_button(), "Run")?;
    check(!window.is_running(), || {
        "a job started with unreadable arguments".into()
    })?;
    let toast = window.last_toast();
    check(
        toast.contains("arguments") && toast.contains("quote"),
        || format!("toast {toast:?}"),
    )?;
    entry.set_text("");
    Ok(())
}

/// Whether the output view shows its last line (within a few pixels).
fn output_at_end(window: &KilnWindow) -> bool {
    let adjustment = window
        .output_pane()
        .output_view()
        .vadjustment()
        .expect("the output view scrolls");
    adjustment.value() + adjustment.page_size() >= adjustment.upper() - 30.0
}

fn output_follows_unless_scrolled_up(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let adjustment = window
        .output_pane()
        .output_view()
        .vadjustment()
        .ok_or("the output view has no vertical adjustment")?;
    // Lines in bursts, long enough to fill the pane many times over.
    type_program(
        window,
        "import time\nfor i in range(1, 601):\n    print(f'line {i}', flush=True)\n    if i % 100 == 0:\n        time.sleep(0.3)\n",
    );
    click(&window.run_button(), "Run")?;
    check(
        wait_until(JOB_TIMEOUT, || {
            window.output_pane().text().contains("line 200")
        }),
        || "the first lines never arrived".into(),
    )?;
    check(
        wait_until(Duration::from_secs(2), || output_at_end(window)),
        || {
            format!(
                "the view does not follow new output (value {}, page {}, upper {})",
                adjustment.value(),
                adjustment.page_size(),
                adjustment.upper()
            )
        },
    )?;
    // The user scrolls to the top to read the start; new lines must not pull the view away.
    adjustment.set_value(0.0);
    check(wait_until(JOB_TIMEOUT, || !window.is_running()), || {
        format!("the job did not end within {JOB_TIMEOUT:?}")
    })?;
    wait_until(Duration::from_millis(300), || false);
    let output = window.output_pane().text();
    check(output.contains("line 600"), || {
        format!("the last line is missing: {}", tail(&output))
    })?;
    check(adjustment.value() < 1.0, || {
        format!(
            "the view scrolled away from where the user left it (value {})",
            adjustment.value()
        )
    })?;

    // Back at the bottom, the view follows again.
    type_program(window, "for i in range(1, 601):\n    print(f'again {i}')\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    check(
        wait_until(Duration::from_secs(2), || output_at_end(window)),
        || {
            format!(
                "a new run does not follow its output (value {}, page {}, upper {})",
                adjustment.value(),
                adjustment.page_size(),
                adjustment.upper()
            )
        },
    )
}

fn syntax_error_lists_a_problem(context: &Context) -> Result<(), String> {
    let window = &context.window;
    type_program(window, "print('fine')\n\ndef broken(:\n    pass\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    check(window.status_text() == "Compile error", || {
        format!("status {:?}", window.status_text())
    })?;
    let pane = window.problems_pane();
    let problems = pane.problems();
    check(!problems.is_empty(), || "no problem listed".into())?;
    let problem = problems[0].clone();
    check(problem.line == 3, || {
        format!("problem on line {}, expected 3", problem.line)
    })?;
    let row = pane
        .list_box()
        .row_at_index(0)
        .ok_or("the problems list has no row")?;
    check(row.is_mapped(), || "the Problems pane was not shown".into())?;
    // Put the cursor elsewhere first, so the move is the row's doing.
    let buffer = window.buffer();
    buffer.place_cursor(&buffer.start_iter());
    row.emit_activate();
    wait_until(Duration::from_millis(200), || false);
    let cursor = buffer.iter_at_mark(&buffer.get_insert());
    check(cursor.line() + 1 == problem.line as i32, || {
        format!(
            "cursor on line {}, problem on line {}",
            cursor.line() + 1,
            problem.line
        )
    })?;
    check(cursor.line_offset() + 1 == problem.column as i32, || {
        format!(
            "cursor at column {}, problem at {}",
            cursor.line_offset() + 1,
            problem.column
        )
    })?;
    check(window.editor().has_focus(), || {
        "the editor did not get the focus".into()
    })
}

fn check_finds_problems_without_running(context: &Context) -> Result<(), String> {
    let window = &context.window;
    type_program(window, "print('not run')\nif True\n    pass\n");
    WidgetExt::activate_action(window, "win.check", None).map_err(|e| e.to_string())?;
    check(window.is_running(), || "Check did not start a job".into())?;
    check(wait_until(JOB_TIMEOUT, || !window.is_running()), || {
        "Check did not end".into()
    })?;
    let problems = window.problems_pane().problems();
    check(problems.first().is_some_and(|p| p.line == 2), || {
        format!("problems {problems:?}")
    })?;
    check(!window.output_pane().text().contains("not run"), || {
        "Check ran the program".into()
    })?;

    type_program(window, "print('not run either')\n");
    WidgetExt::activate_action(window, "win.check", None).map_err(|e| e.to_string())?;
    check(wait_until(JOB_TIMEOUT, || !window.is_running()), || {
        "Check did not end".into()
    })?;
    check(window.status_text() == "No problems found", || {
        format!("status {:?}", window.status_text())
    })?;
    check(window.problems_pane().problems().is_empty(), || {
        "stale problems".into()
    })
}

fn stop_ends_an_endless_program(context: &Context) -> Result<(), String> {
    let window = &context.window;
    type_program(
        window,
        "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.01)\n",
    );
    click(&window.run_button(), "Run")?;
    check(
        wait_until(JOB_TIMEOUT, || {
            window.output_pane().text().contains("started")
        }),
        || "the endless program never started".into(),
    )?;
    check(window.is_running(), || {
        "the endless program ended by itself".into()
    })?;
    let stopped_at = Instant::now();
    click(&window.stop_button(), "Stop")?;
    check(
        wait_until(Duration::from_secs(5), || !window.is_running()),
        || "Stop did not end the job within 5 s".into(),
    )?;
    eprintln!("  stopped in {} ms", stopped_at.elapsed().as_millis());
    check(window.status_text() == "Stopped", || {
        format!("status {:?}", window.status_text())
    })?;
    check(window.run_button().is_sensitive(), || {
        "Run is not clickable after Stop".into()
    })
}

fn build_writes_the_compiled_program(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let target = context.dir.join("out").join("hello.pyc");
    std::fs::create_dir_all(target.parent().expect("parent")).map_err(|e| e.to_string())?;
    type_program(window, "print('built')\n");
    window.set_next_save_path(Some(target.clone()));
    run_and_wait(window, &window.build_button(), "Download compiled program")?;
    check(window.status_text() == "Built", || {
        format!("status {:?}", window.status_text())
    })?;
    // GIO writes the file asynchronously: wait for the whole of it.
    let size = || std::fs::metadata(&target).map_or(0, |m| m.len());
    check(wait_until(Duration::from_secs(5), || size() > 16), || {
        format!("{} was not written ({} bytes)", target.display(), size())
    })?;
    let bytes = std::fs::read(&target).map_err(|e| e.to_string())?;
    // A CPython .pyc starts with a magic number ending in \r\n.
    check(bytes.get(2..4) == Some(b"\r\n"), || {
        format!(
            "{} is not a .pyc: {:?}",
            target.display(),
            &bytes[..4.min(bytes.len())]
        )
    })
}

/// Sets a limit of the built-in server in the settings (the application restarts the server) and
/// waits until the server's INFO reports `info_key: expected`.
fn set_embedded_limit(
    context: &Context,
    setting: &str,
    value: i32,
    info_key: &str,
    expected: &str,
) -> Result<(), String> {
    context
        .app
        .settings()
        .set_int(setting, value)
        .map_err(|e| e.to_string())?;
    let embedded = context.app.embedded();
    let applied = wait_until(Duration::from_secs(10), || {
        embedded.ensure_started().is_ok_and(|endpoint| {
            kiln::client::Client::new(endpoint.connect, Some(endpoint.token))
                .info()
                .is_ok_and(|info| info.get(info_key) == Some(expected))
        })
    });
    check(applied, || {
        format!(
            "the built-in server did not take {setting} = {value} (INFO {info_key} is not {expected})"
        )
    })
}

fn flood_keeps_window_responsive(context: &Context) -> Result<(), String> {
    let window = &context.window;
    // 10 MB in 100-byte lines, all of it sent: raise the built-in server's output limit.
    set_embedded_limit(
        context,
        "output-limit-mib",
        16,
        "output-limit-bytes",
        "16777216",
    )?;
    type_program(
        window,
        "import sys\nline = 'x' * 99 + '\\n'\nfor _ in range(100):\n    sys.stdout.write(line * 1000)\n",
    );
    let gaps = Rc::new(Cell::new(Duration::ZERO));
    let last = Rc::new(Cell::new(Instant::now()));
    let ticker = glib::timeout_add_local(
        Duration::from_millis(10),
        glib::clone!(
            #[strong]
            gaps,
            #[strong]
            last,
            move || {
                let now = Instant::now();
                gaps.set(gaps.get().max(now - last.get()));
                last.set(now);
                glib::ControlFlow::Continue
            }
        ),
    );
    // The same ticker with nothing running, as the yardstick for the stall below.
    last.set(Instant::now());
    wait_until(Duration::from_millis(500), || false);
    let idle_gap = gaps.replace(Duration::ZERO);
    let started = Instant::now();
    last.set(started);
    let result = run_and_wait(window, &window.run_button(), "Run");
    ticker.remove();
    result?;
    let elapsed = started.elapsed();
    let output = window.output_pane().text();
    eprintln!(
        "  {} KiB shown in {} ms; longest main-loop stall {} ms (idle: {} ms, ratio {:.1}); status {} ({})",
        output.len() / 1024,
        elapsed.as_millis(),
        gaps.get().as_millis(),
        idle_gap.as_millis(),
        gaps.get().as_secs_f64() / idle_gap.as_secs_f64().max(0.001),
        window.status_text(),
        window.status_details()
    );
    check(output.contains("Output truncated"), || {
        "no truncation notice".into()
    })?;
    check(window.status_text() == "Finished", || {
        format!(
            "status {:?}: the 10 MB did not all arrive",
            window.status_text()
        )
    })?;
    check(
        output.contains("more bytes of output were not shown"),
        || "no count of the hidden output".into(),
    )?;
    check(output.len() < 2 * 1024 * 1024, || {
        format!("the pane holds {} bytes", output.len())
    })?;
    check(gaps.get() < Duration::from_millis(1500), || {
        format!("the main loop stalled for {} ms", gaps.get().as_millis())
    })
}

fn draft_is_saved(context: &Context) -> Result<(), String> {
    let window = &context.window;
    type_program(window, "print('draft survives')\n");
    set_input(window, "typed input\n");
    window
        .output_pane()
        .arguments_entry()
        .set_text("--flag 'two words'");
    let draft = context.dir.join("data").join("kiln").join("draft");
    check(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&draft).is_ok_and(|text| {
                text.contains("draft survives")
                    && text.contains("typed input")
                    && text.contains("two words")
            })
        }),
        || {
            format!(
                "{} does not hold the text, input and arguments: {:?}",
                draft.display(),
                std::fs::read_to_string(&draft)
            )
        },
    )?;
    // A new window (as after a restart) starts from the draft.
    let second = KilnWindow::new(&context.app);
    let buffer = second.buffer();
    let restored = buffer.text(&buffer.start_iter(), &buffer.end_iter(), false);
    let restored_input = second.output_pane().input_text();
    let restored_arguments = second.output_pane().arguments_text();
    second.destroy();
    set_input(window, "");
    window.output_pane().arguments_entry().set_text("");
    check(restored == "print('draft survives')\n", || {
        format!("a new window restored {restored:?}")
    })?;
    check(
        restored_input == "typed input\n" && restored_arguments == "--flag 'two words'",
        || {
            format!(
                "a new window restored input {restored_input:?}, arguments {restored_arguments:?}"
            )
        },
    )?;
    // Typed but never saved to a file: the title says so.
    check(window.title_text() == "• Untitled", || {
        format!("title {:?}", window.title_text())
    })
}

fn menu_windows_open(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let toplevel = |type_name: &str| {
        gtk::Window::list_toplevels()
            .into_iter()
            .filter_map(|w| w.downcast::<gtk::Window>().ok())
            .find(|w| w.type_().name() == type_name && w.is_visible())
    };
    for (action, type_name) in [
        ("win.show-help-overlay", "GtkShortcutsWindow"),
        ("app.about", "AdwAboutWindow"),
        ("app.preferences", "KilnPreferencesDialog"),
    ] {
        WidgetExt::activate_action(window, action, None).map_err(|e| format!("{action}: {e}"))?;
        let mut shown = None;
        wait_until(Duration::from_secs(5), || {
            shown = toplevel(type_name);
            shown.is_some()
        });
        let shown = shown.ok_or_else(|| format!("{action} did not open a {type_name}"))?;
        shown.close();
        wait_until(Duration::from_millis(100), || false);
    }
    Ok(())
}

fn preferences_apply(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let dialog = open_preferences(context)?;
    // Change them through the dialog's own controls, found by the row a user reads.
    let spin = row_control::<gtk::SpinButton>(dialog.upcast_ref(), "Tab Width")
        .ok_or("no Tab Width control")?;
    spin.set_value(8.0);
    let wrap = row_control::<gtk::Switch>(dialog.upcast_ref(), "Wrap Long Lines")
        .ok_or("no Wrap Long Lines control")?;
    let wrap_wanted = !wrap.is_active();
    wrap.set_active(wrap_wanted);
    wait_until(Duration::from_millis(100), || false);
    dialog.close();
    let editor = window.editor();
    check(
        editor.tab_width() == 8 && editor.indent_width() == 8,
        || {
            format!(
                "editor tab/indent width {}/{}",
                editor.tab_width(),
                editor.indent_width()
            )
        },
    )?;
    let wrap_mode = window.output_pane().output_view().wrap_mode();
    let expected = if wrap_wanted {
        gtk::WrapMode::WordChar
    } else {
        gtk::WrapMode::None
    };
    check(wrap_mode == expected, || {
        format!("output wrap {wrap_mode:?}")
    })?;
    let settings = context.app.settings();
    settings.reset("tab-width");
    settings.reset("output-wrap");
    Ok(())
}

/// The control of type `T` inside the first `AdwActionRow` titled `title` under `root`.
fn row_control<T: IsA<gtk::Widget>>(root: &gtk::Widget, title: &str) -> Option<T> {
    let row = descendants(root).into_iter().find(|widget| {
        widget
            .downcast_ref::<adw::ActionRow>()
            .is_some_and(|row| row.title() == title)
    })?;
    descendants(&row)
        .into_iter()
        .find_map(|widget| widget.downcast::<T>().ok())
}

fn descendants(root: &gtk::Widget) -> Vec<gtk::Widget> {
    let mut all = Vec::new();
    let mut child = root.first_child();
    while let Some(widget) = child {
        all.push(widget.clone());
        all.extend(descendants(&widget));
        child = widget.next_sibling();
    }
    all
}

fn time_limit_is_reported(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let settings = context.app.settings();
    set_embedded_limit(context, "time-limit-seconds", 1, "time-limit-ms", "1000")?;
    type_program(window, "import time\ntime.sleep(5)\nprint('too late')\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    settings.reset("time-limit-seconds");
    check(window.status_text() == "Time limit exceeded", || {
        format!("status {:?}", window.status_text())
    })?;
    check(!window.output_pane().text().contains("too late"), || {
        "the program ran past its limit".into()
    })
}

fn unreachable_server_says_what_to_do(context: &Context) -> Result<(), String> {
    let window = &context.window;
    // A loopback port nobody listens on: bind a free one and let it go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .to_string();
    let dialog = open_preferences(context)?;
    add_server(&dialog, &addr, "")?;
    check(
        wait_until(JOB_TIMEOUT, || {
            dialog
                .server_statuses()
                .iter()
                .any(|(a, s)| *a == addr && s.starts_with("Not reachable"))
        }),
        || format!("no 'Not reachable' in {:?}", dialog.server_statuses()),
    )?;
    dialog.close();
    type_program(window, "print('nowhere')\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    check(window.status_text() == "Failed", || {
        format!("status {:?}", window.status_text())
    })?;
    let output = window.output_pane().text();
    check(
        output.contains("Cannot reach") && output.contains("This computer"),
        || format!("no advice in {output:?}"),
    )?;
    window.server_dropdown().set_selected(0);
    Ok(())
}

/// A RUN of an endless Python program sent by another client, holding a worker or a queue slot
/// until the stream is dropped (the server then kills the job).
fn hold_a_worker(addr: &str) -> Result<std::net::TcpStream, String> {
    use std::io::Write;
    let source = "import time\nprint('holding', flush=True)\ntime.sleep(60)\n";
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(
        stream,
        "KILN/1 RUN python\nSource-Length: {}\n\n{source}",
        source.len()
    )
    .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn busy_server_says_to_try_again(context: &Context) -> Result<(), String> {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let window = &context.window;
    // One worker and one queue slot, both taken by another client: the next job is refused.
    let mut config = ServerConfig::loopback();
    config.workers = 1;
    config.queue_capacity = 1;
    let server = kiln::server::start(config).map_err(|e| e.to_string())?;
    let addr = server.local_addr().to_string();
    let mut running = hold_a_worker(&addr)?;
    let mut first = [0u8; 256];
    check(
        wait_until(
            JOB_TIMEOUT,
            || matches!(running.read(&mut first), Ok(n) if n > 0),
        ),
        || "the first holder never started running".into(),
    )?;
    let queued = hold_a_worker(&addr)?;
    // The reader queues it as soon as its header is in.
    wait_until(Duration::from_millis(300), || false);

    let dialog = open_preferences(context)?;
    add_server(&dialog, &addr, "")?;
    dialog.close();
    type_program(window, "print('never runs')\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    check(window.status_text() == "Failed", || {
        format!("status {:?}", window.status_text())
    })?;
    let output = window.output_pane().text();
    check(
        output.contains("is busy") && output.contains("try again"),
        || format!("no advice on a busy server in {output:?}"),
    )?;
    check(server.stats().busy.load(Ordering::Relaxed) >= 1, || {
        "the server did not count a busy answer".into()
    })?;
    drop(running);
    drop(queued);
    server.shutdown(Duration::from_secs(2));
    window.server_dropdown().set_selected(0);
    Ok(())
}

fn open_edit_save_and_new_files(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let path = context.dir.join("files").join("greet.py");
    std::fs::create_dir_all(path.parent().expect("parent")).map_err(|e| e.to_string())?;
    std::fs::write(&path, "print('from a file')\n").map_err(|e| e.to_string())?;
    window.open_file(gio::File::for_path(&path));
    check(
        wait_until(Duration::from_secs(5), || window.title_text() == "greet.py"),
        || format!("title {:?} after opening", window.title_text()),
    )?;
    let buffer = window.buffer();
    let text = buffer.text(&buffer.start_iter(), &buffer.end_iter(), false);
    check(text == "print('from a file')\n", || {
        format!("editor holds {text:?}")
    })?;

    type_program(window, "print('edited')\n");
    check(window.title_text() == "• greet.py", || {
        format!("title {:?} after an edit", window.title_text())
    })?;
    // Closing with unsaved changes to a file asks first; Cancel keeps the window.
    window.close();
    let mut question = None;
    wait_until(Duration::from_secs(5), || {
        question = gtk::Window::list_toplevels()
            .into_iter()
            .find_map(|w| w.downcast::<adw::MessageDialog>().ok())
            .filter(|dialog| dialog.is_visible());
        question.is_some()
    });
    let question = question.ok_or("closing with unsaved changes did not ask")?;
    check(
        question.has_response("save") && question.has_response("discard"),
        || "the question offers no Save and Discard".into(),
    )?;
    question.response("cancel");
    wait_until(Duration::from_millis(200), || false);
    check(window.is_visible(), || {
        "Cancel did not keep the window open".into()
    })?;

    // Ctrl+S / the menu's Save: the file has a path, so no dialog.
    WidgetExt::activate_action(window, "win.save", None).map_err(|e| e.to_string())?;
    check(
        wait_until(Duration::from_secs(5), || window.title_text() == "greet.py"),
        || format!("title {:?} after saving", window.title_text()),
    )?;
    let saved = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    check(saved == "print('edited')\n", || {
        format!("the file holds {saved:?}")
    })?;

    // New: nothing unsaved, so no question; the language's template replaces the text.
    WidgetExt::activate_action(window, "win.new", None).map_err(|e| e.to_string())?;
    check(window.title_text() == "Untitled", || {
        format!("title {:?} after New", window.title_text())
    })?;
    let text = buffer.text(&buffer.start_iter(), &buffer.end_iter(), false);
    check(text.contains("Hello, world!"), || {
        format!("New gave {text:?}")
    })
}

fn remote_server_runs_programs(context: &Context) -> Result<(), String> {
    let window = &context.window;
    let mut config = ServerConfig::loopback();
    config.token = Some(Token::generate());
    config.workers = 1;
    let server = kiln::server::start(config).map_err(|e| e.to_string())?;
    let addr = server.local_addr().to_string();
    let token = server.token().expect("token").as_str().to_owned();

    // Add it with a wrong token first: the run must fail with a message saying what to do.
    let dialog = open_preferences(context)?;
    add_server(&dialog, &addr, "wrong-token")?;
    check(
        wait_until(JOB_TIMEOUT, || {
            dialog
                .server_statuses()
                .iter()
                .any(|(a, s)| *a == addr && s.contains("token"))
        }),
        || format!("no token complaint in {:?}", dialog.server_statuses()),
    )?;
    check(window.server_dropdown().selected() == 1, || {
        "the new server is not selected".into()
    })?;
    type_program(window, "print('ran remotely')\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    check(window.status_text() == "Failed", || {
        format!("status {:?}", window.status_text())
    })?;
    check(
        window.output_pane().text().contains("refused the token"),
        || "no explanation of the refused token".into(),
    )?;

    // Now the right token.
    add_server(&dialog, &addr, &token)?;
    check(
        wait_until(JOB_TIMEOUT, || {
            dialog
                .server_statuses()
                .iter()
                .any(|(a, s)| *a == addr && s.starts_with("Reachable") && s.contains("Python"))
        }),
        || {
            format!(
                "the server never showed as reachable: {:?}",
                dialog.server_statuses()
            )
        },
    )?;
    dialog.close();
    let served_before = server
        .stats()
        .served
        .load(std::sync::atomic::Ordering::Relaxed);
    run_and_wait(window, &window.run_button(), "Run")?;
    let output = window.output_pane().text();
    check(output.contains("ran remotely"), || {
        format!("output {output:?}")
    })?;
    // The server counts a job after writing its result, so the count may trail the window.
    let served = || {
        server
            .stats()
            .served
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    check(
        wait_until(Duration::from_secs(5), || served() > served_before),
        || "the remote server did not run the job".into(),
    )?;

    // Back to this computer through the selector.
    window.server_dropdown().set_selected(0);
    check(
        context.app.settings().string("current-server").is_empty(),
        || "choosing This computer did not stick".into(),
    )?;
    server.shutdown(Duration::from_secs(1));
    Ok(())
}

/// A real 3-node cluster added as a remote server: the Cluster page appears, lists all nodes with
/// one leader, and its diagram draws messages between them; killing the leader shows it
/// unreachable and a new leader; switching back to This computer hides the page.
fn cluster_view_shows_nodes_leader_and_messages(context: &Context) -> Result<(), String> {
    let window = &context.window;
    check(!window.cluster_page_visible(), || {
        "the Cluster page shows for a server that is not in a cluster".into()
    })?;
    let mut cluster = cluster_support::TestCluster::start(3, 100);
    let addr = cluster.addrs[0].clone();
    let dialog = open_preferences(context)?;
    add_server(&dialog, &addr, cluster_support::TOKEN)?;
    dialog.close();
    check(
        wait_until(JOB_TIMEOUT, || window.cluster_page_visible()),
        || "the Cluster page did not appear for a cluster node".into(),
    )?;
    window.show_cluster_page();
    let pane = window.cluster_pane();
    let shown = wait_until(JOB_TIMEOUT, || {
        pane.nodes_shown() == 3 && pane.leaders_shown() == 1 && pane.arrows_drawn() > 0
    });
    check(shown, || {
        format!(
            "the Cluster page shows {} nodes, {} leaders, {} arrows",
            pane.nodes_shown(),
            pane.leaders_shown(),
            pane.arrows_drawn()
        )
    })?;

    // Kill the leader (the highest id, 3): the page must follow the re-election live.
    cluster.kill(3);
    let followed = wait_until(JOB_TIMEOUT, || {
        pane.nodes_shown() == 3 && pane.unreachable_shown() == 1 && pane.leaders_shown() == 1
    });
    check(followed, || {
        format!(
            "after killing the leader the page shows {} nodes, {} unreachable, {} leaders",
            pane.nodes_shown(),
            pane.unreachable_shown(),
            pane.leaders_shown()
        )
    })?;
    if let Some(dir) = std::env::var_os("KILN_SCREENSHOTS").map(PathBuf::from) {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        window.unmaximize();
        window.set_default_size(1024, 700);
        wait_until(Duration::from_millis(1200), || false);
        shoot(&dir.join("light-cluster.png"), 1024, 700)?;
        let manager = adw::StyleManager::default();
        manager.set_color_scheme(adw::ColorScheme::ForceDark);
        wait_until(Duration::from_millis(700), || false);
        shoot(&dir.join("dark-cluster.png"), 1024, 700)?;
        manager.set_color_scheme(adw::ColorScheme::Default);
    }

    window.server_dropdown().set_selected(0);
    check(
        wait_until(JOB_TIMEOUT, || !window.cluster_page_visible()),
        || "the Cluster page stayed for This computer".into(),
    )?;
    drop(cluster);
    Ok(())
}

fn open_preferences(context: &Context) -> Result<KilnPreferencesDialog, String> {
    context.app.activate_action("preferences", None);
    let mut dialog = None;
    wait_until(Duration::from_secs(5), || {
        dialog = gtk::Window::list_toplevels()
            .into_iter()
            .find_map(|w| w.downcast::<KilnPreferencesDialog>().ok());
        dialog.as_ref().is_some_and(|d| d.is_mapped())
    });
    dialog.ok_or_else(|| "Preferences did not open".into())
}

fn add_server(dialog: &KilnPreferencesDialog, addr: &str, token: &str) -> Result<(), String> {
    dialog.address_row().set_text(addr);
    dialog.token_row().set_text(token);
    click(&dialog.add_button(), "Add Server")?;
    wait_until(Duration::from_millis(200), || false);
    Ok(())
}

/// With `KILN_SCREENSHOTS=DIR`, shows a typical state (a program, its output, a problem) light and
/// dark at 800x600 and 1920x1080 and saves screenshots of the X screen there (ImageMagick
/// `import`); the screen must be at least 1920x1080. Without it, does nothing.
fn screenshots(context: &Context) -> Result<(), String> {
    let Some(dir) = std::env::var_os("KILN_SCREENSHOTS").map(PathBuf::from) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let window = &context.window;
    type_program(
        window,
        "import sys\n\n\ndef greet(name):\n    return f\"Hello, {name}!\"\n\n\nfor name in sys.stdin.read().split():\n    print(greet(name))\nprint(\"No more names\", file=sys.stderr)\n",
    );
    set_input(window, "Ada\nGrace\nLinus\n");
    run_and_wait(window, &window.run_button(), "Run")?;
    let manager = adw::StyleManager::default();
    for (scheme, name) in [
        (adw::ColorScheme::ForceLight, "light"),
        (adw::ColorScheme::ForceDark, "dark"),
    ] {
        manager.set_color_scheme(scheme);
        for (width, height) in [(800, 600), (1920, 1080)] {
            window.unmaximize();
            window.set_default_size(width, height);
            wait_until(Duration::from_millis(700), || false);
            let file = dir.join(format!("{name}-{width}x{height}.png"));
            let status = std::process::Command::new("import")
                .args(["-window", "root", "-crop", &format!("{width}x{height}+0+0")])
                .arg(&file)
                .status()
                .map_err(|e| format!("cannot run import: {e}"))?;
            check(status.success(), || {
                format!("import failed for {}", file.display())
            })?;
        }
    }
    // A syntax error with the Problems pane, dark.
    window.unmaximize();
    window.set_default_size(1024, 700);
    type_program(
        window,
        "def area(width, height):\n    return width * height\n\nprint(area(3, 4)\n",
    );
    run_and_wait(window, &window.run_button(), "Run")?;
    wait_until(Duration::from_millis(700), || false);
    shoot(&dir.join("dark-problems.png"), 1024, 700)?;

    // Preferences with sharing on (on a free port: this only runs when screenshots are asked for).
    manager.set_color_scheme(adw::ColorScheme::ForceLight);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let settings = context.app.settings();
    let _ = settings.set_int("share-port", i32::from(port));
    let _ = settings.set_boolean("share-on-network", true);
    let dialog = open_preferences(context)?;
    dialog.set_visible_page_name("servers");
    wait_until(Duration::from_secs(3), || false);
    shoot(&dir.join("light-preferences.png"), 1024, 700)?;
    dialog.close();
    let _ = settings.set_boolean("share-on-network", false);
    manager.set_color_scheme(adw::ColorScheme::Default);
    set_input(window, "");
    Ok(())
}

fn shoot(file: &std::path::Path, width: u32, height: u32) -> Result<(), String> {
    let status = std::process::Command::new("import")
        .args(["-window", "root", "-crop", &format!("{width}x{height}+0+0")])
        .arg(file)
        .status()
        .map_err(|e| format!("cannot run import: {e}"))?;
    check(status.success(), || {
        format!("import failed for {}", file.display())
    })
}
