//! Build script: records the git commit for `kiln --version` and, with the `gui` feature, compiles
//! the GResource bundle from `resources/`.

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
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    #[cfg(feature = "gui")]
    gui::compile_resources();
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
    pub fn compile_resources() {
        if std::path::Path::new("resources/resources.gresource.xml").exists() {
            glib_build_tools::compile_resources(
                &["resources"],
                "resources/resources.gresource.xml",
                "kiln.gresource",
            );
        }
    }
}
