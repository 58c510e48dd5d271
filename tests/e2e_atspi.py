#!/usr/bin/python3
"""End-to-end test of the Kiln desktop app through accessibility (AT-SPI), the way a person
uses it: find the editor, type a program with the keyboard, press Run, read the Output.

Needs an X display, a D-Bus session bus and the AT-SPI bus; run it through tests/e2e_atspi.sh:

    tests/e2e_atspi.sh target/debug/kiln

It uses Debian's /usr/bin/python3 with python3-pyatspi. Exits 0 on success, 1 with a message on
failure.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyatspi

TIMEOUT = 30.0


def log(message):
    print(f"e2e: {message}", flush=True)


def wait_for(what, predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # The tree changes while we look at it.
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def find_app(pid):
    desktop = pyatspi.Registry.getDesktop(0)
    for app in desktop:
        if app is not None and app.get_process_id() == pid:
            return app
    return None


def find(root, role, name):
    """The first descendant with `role` (any role if None) whose accessible name is `name`."""
    return pyatspi.findDescendant(
        root,
        lambda node: node is not None
        and (role is None or node.getRole() == role)
        and node.name == name,
    )


def click(node):
    """A left click in the middle of `node`. GTK 4 reports extents relative to its window;
    without a window manager (Xvfb) the window sits at the screen's origin."""
    extents = node.queryComponent().getExtents(pyatspi.WINDOW_COORDS)
    pyatspi.Registry.generateMouseEvent(
        extents.x + extents.width // 2, extents.y + extents.height // 2, "b1c"
    )


def text_of(node):
    text = node.queryText()
    return text.getText(0, text.characterCount)


def ctrl_return():
    """Presses Ctrl+Return through AT-SPI (XTest under X11)."""
    control_mask = 1 << 2
    return_keysym = 0xFF0D
    pyatspi.Registry.generateKeyboardEvent(control_mask, None, pyatspi.KEY_LOCKMODIFIERS)
    try:
        pyatspi.Registry.generateKeyboardEvent(return_keysym, None, pyatspi.KEY_SYM)
    finally:
        pyatspi.Registry.generateKeyboardEvent(control_mask, None, pyatspi.KEY_UNLOCKMODIFIERS)


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/kiln")
    home = tempfile.mkdtemp(prefix="kiln-e2e-")
    env = dict(os.environ)
    env.update(
        {
            "XDG_DATA_HOME": os.path.join(home, "data"),
            "XDG_CONFIG_HOME": os.path.join(home, "config"),
            "XDG_CACHE_HOME": os.path.join(home, "cache"),
            "TMPDIR": os.path.join(home, "tmp"),
            "GSETTINGS_BACKEND": "memory",
            "GSK_RENDERER": "cairo",
            "RUST_LOG": "warn",
        }
    )
    for variable in ("GTK_A11Y", "NO_AT_BRIDGE"):
        env.pop(variable, None)
    os.mkdir(os.path.join(home, "tmp"))
    log(f"starting {binary}")
    app_process = subprocess.Popen([binary], env=env)
    try:
        app = wait_for("the app on the accessibility bus", lambda: find_app(app_process.pid))
        log(f"found application {app.name!r}")
        run = wait_for("the Run button", lambda: find(app, pyatspi.ROLE_PUSH_BUTTON, "Run"))
        editor = wait_for("the editor", lambda: find(app, pyatspi.ROLE_TEXT, "Program"))
        output_name = "Output"

        # Wait until the built-in server said which languages it has.
        language = wait_for(
            "the language selector", lambda: find(app, pyatspi.ROLE_COMBO_BOX, "Language")
        )
        log(f"language selector: {language.name!r}")

        editable = editor.queryEditableText()

        def type_program(program):
            """Empties the editor and types `program` with the keyboard."""
            editable.deleteText(0, editor.queryText().characterCount)
            pyatspi.Registry.generateKeyboardEvent(0, program, pyatspi.KEY_STRING)
            wait_for(f"{program!r} in the editor", lambda: program in text_of(editor))

        def wait_for_output(what, expected):
            def output_has_it():
                # The output view appears once the job starts (the empty state is shown before).
                output = find(app, pyatspi.ROLE_TEXT, output_name)
                return output is not None and expected in text_of(output)

            wait_for(what, output_has_it)

        # Click into the editor, then type a program with the keyboard.
        click(editor)
        wait_for(
            "the editor to have focus",
            lambda: editor.getState().contains(pyatspi.STATE_FOCUSED),
        )
        type_program("print('hello from AT-SPI', 6 * 7)")
        log("typed the program")

        # Run with the keyboard shortcut, Ctrl+Return, while typing in the editor.
        ctrl_return()
        log("pressed Ctrl+Return")

        wait_for_output("the program's output in the Output pane", "hello from AT-SPI 42")
        status = wait_for("the status line", lambda: find(app, pyatspi.ROLE_LABEL, "Finished"))
        log(f"status line says {status.name!r}")

        # A second run with the Run button, pressed through its accessible action, reading stdin
        # from the Input area.
        type_program("print(input()[::-1])")
        stdin = wait_for("the Input area", lambda: find(app, pyatspi.ROLE_TEXT, "Program input"))
        stdin.queryEditableText().setTextContents("level up\n")
        run.queryAction().doAction(0)
        log("pressed Run")

        wait_for_output("the reversed input in the Output pane", "pu level")

        # A third run with command-line arguments typed into the Arguments field.
        type_program("import sys; print('args:', sys.argv[1:])")
        arguments = wait_for(
            "the Arguments field", lambda: find(app, None, "Program arguments")
        )
        click(arguments)
        pyatspi.Registry.generateKeyboardEvent(0, '-v "two words"', pyatspi.KEY_STRING)
        run.queryAction().doAction(0)
        log("typed arguments and pressed Run")

        wait_for_output("the arguments in the Output pane", "args: ['-v', 'two words']")

        # Logging out sends SIGTERM: the app closes as Quit would, keeping the draft and removing
        # its temporary files, and exits successfully.
        app_process.terminate()
        try:
            code = app_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("the app did not exit within 10 s of SIGTERM")
        assert code == 0, f"the app exited with {code} on SIGTERM"
        with open(os.path.join(home, "data", "kiln", "draft"), encoding="utf-8") as draft:
            saved = draft.read()
        assert "sys.argv[1:]" in saved, f"the draft does not hold the last program: {saved!r}"
        left = [name for name in os.listdir(os.path.join(home, "tmp")) if name.startswith("kiln-")]
        assert not left, f"temporary files left after SIGTERM: {left}"
        log("SIGTERM: exited 0, draft kept, no temporary files left")
        log("PASS")
        return 0
    except AssertionError as error:
        log(f"FAIL: {error}")
        return 1
    finally:
        app_process.terminate()
        try:
            app_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app_process.kill()
            app_process.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
