//! Build script: records the git commit for `kiln --version` and, with the `gui` feature, compiles
//! the GResource bundle from `resources/` and the GSettings schema from `data/` (so `cargo run` and
//! `cargo test` work without an installed schema; `src/ui/settings.rs` falls back to it).

use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = std::env::var("KILN_GIT_COMMIT").ok().or_else(git_commit);
    let line = match commit {
        Some(commit) => format!("{version} ({commit})"),
        None => version,
    };
    println!("cargo:rustc-env=KILN_VERSION_LINE={line}");
    println!("cargo:rerun-if-env-changed=KILN_GIT_COMMIT");
    // Ask git where HEAD and the refs live: in a worktree `.git` is a file and they are elsewhere.
    for name in ["HEAD", "refs", "packed-refs"] {
        match git_path(name) {
            Some(path) => println!("cargo:rerun-if-changed={path}"),
            None => println!("cargo:rerun-if-changed=.git/{name}"),
        }
    }
    #[cfg(feature = "gui")]
    gui::compile_resources();
}

/// The path of `name` inside the git directory (`git rev-parse --git-path`), if this is a checkout.
fn git_path(name: &str) -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--git-path", name])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    std::path::Path::new(&path).exists().then_some(path)
}

fn git_commit() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

#[cfg(feature = "gui")]
mod gui {
    use std::path::PathBuf;
    use std::process::Command;

    /// The app id when meson does not pass one; keep in sync with `meson_options.txt`.
    const DEFAULT_APP_ID: &str = "io.github.kiln.Kiln";

    pub fn compile_resources() {
        println!("cargo:rerun-if-env-changed=APP_ID");
        println!("cargo:rerun-if-changed=resources");
        compile_schema();
        if std::path::Path::new("resources/resources.gresource.xml").exists() {
            glib_build_tools::compile_resources(
                &["resources"],
                "resources/resources.gresource.xml",
                "kiln.gresource",
            );
        }
    }

    /// Writes the schema for this app id into `OUT_DIR/schemas` and compiles it there; the app
    /// uses it when no installed schema is found. A missing `glib-compile-schemas` is a warning:
    /// the app then needs the installed schema.
    fn compile_schema() {
        let template = "data/io.github.kiln.Kiln.gschema.xml.in";
        println!("cargo:rerun-if-changed={template}");
        let Ok(text) = std::fs::read_to_string(template) else {
            return;
        };
        let app_id = std::env::var("APP_ID").unwrap_or_else(|_| DEFAULT_APP_ID.to_owned());
        let path = format!("/{}/", app_id.replace('.', "/"));
        let text = text
            .replace("@APP_ID@", &app_id)
            .replace("@SCHEMA_PATH@", &path);
        let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
            return;
        };
        let dir = out_dir.join("schemas");
        if std::fs::create_dir_all(&dir).is_err()
            || std::fs::write(dir.join(format!("{app_id}.gschema.xml")), text).is_err()
        {
            println!(
                "cargo:warning=cannot write the GSettings schema to {}",
                dir.display()
            );
            return;
        }
        match Command::new("glib-compile-schemas")
            .arg("--strict")
            .arg(&dir)
            .status()
        {
            Ok(status) if status.success() => {
                println!("cargo:rustc-env=KILN_SCHEMA_DIR={}", dir.display());
            }
            _ => println!(
                "cargo:warning=glib-compile-schemas failed; the app needs an installed schema"
            ),
        }
    }
}
