//! Offline checks of the packaging (issue 7): the Flatpak manifests in `flatpak/`, their crate
//! sources against `Cargo.lock`, the systemd unit in `data/` and the container build in
//! `deploy/`. Nothing here can build a Flatpak or an image (no network, no flatpak-builder, no
//! podman in CI); `.ci/install-check` covers the meson install and the installed binary.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const BASE_ID: &str = "io.github.kiln.Kiln";
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// One `[[package]]` of Cargo.lock: name, version, source, checksum.
struct LockedPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
}

/// Reads the packages of Cargo.lock with a line parser: the lock's layout is fixed by cargo, and
/// this keeps the check independent of the Python generator it verifies.
fn locked_packages() -> Vec<LockedPackage> {
    let mut packages = Vec::new();
    for block in read("Cargo.lock").split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|line| {
                line.strip_prefix(&format!("{key} = \""))
                    .and_then(|rest| rest.strip_suffix('"'))
                    .map(str::to_owned)
            })
        };
        packages.push(LockedPackage {
            name: field("name").expect("package without a name"),
            version: field("version").expect("package without a version"),
            source: field("source"),
            checksum: field("checksum"),
        });
    }
    packages
}

fn cargo_sources() -> Vec<Value> {
    let text = read("flatpak/cargo-sources.json");
    let value: Value = serde_json::from_str(&text).expect("flatpak/cargo-sources.json is not JSON");
    value
        .as_array()
        .expect("cargo-sources.json is not a list")
        .clone()
}

#[test]
fn cargo_sources_are_what_the_generator_makes_from_cargo_lock() {
    let output = Command::new("python3")
        .current_dir(root())
        .args(["tools/flatpak-cargo-sources.py", "Cargo.lock", "-o", "-"])
        .output()
        .expect("python3 (3.11 or later, for tomllib) must be on PATH");
    assert!(
        output.status.success(),
        "tools/flatpak-cargo-sources.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = read("flatpak/cargo-sources.json");
    assert!(
        output.stdout == committed.as_bytes(),
        "flatpak/cargo-sources.json does not match Cargo.lock; regenerate it with\n    \
         tools/flatpak-cargo-sources.py\nand commit the result"
    );
}

#[test]
fn every_locked_crate_has_a_checked_archive_and_a_checksum_file() {
    let sources = cargo_sources();
    let packages = locked_packages();
    let registry: Vec<&LockedPackage> = packages
        .iter()
        .filter(|p| p.source.as_deref() == Some(CRATES_IO))
        .collect();
    assert!(
        registry.len() > 50,
        "suspiciously few crates in Cargo.lock: {}",
        registry.len()
    );
    let others: Vec<String> = packages
        .iter()
        .filter(|p| p.source.as_deref().is_some_and(|s| s != CRATES_IO))
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    assert!(
        others.is_empty(),
        "crates not from crates.io need other Flatpak sources: {others:?}"
    );
    for package in &registry {
        let dest = format!("cargo/vendor/{}-{}", package.name, package.version);
        let checksum = package
            .checksum
            .as_deref()
            .expect("crates.io package without checksum");
        let archive = sources
            .iter()
            .find(|s| s["type"] == "archive" && s["dest"] == dest.as_str())
            .unwrap_or_else(|| panic!("no archive source for {dest}"));
        assert_eq!(archive["sha256"], checksum, "sha256 of {dest}");
        assert_eq!(
            archive["url"],
            format!(
                "https://static.crates.io/crates/{0}/{0}-{1}.crate",
                package.name, package.version
            )
            .as_str()
        );
        let inline = sources
            .iter()
            .find(|s| {
                s["type"] == "inline"
                    && s["dest"] == dest.as_str()
                    && s["dest-filename"] == ".cargo-checksum.json"
            })
            .unwrap_or_else(|| panic!("no .cargo-checksum.json for {dest}"));
        let contents: Value = serde_json::from_str(inline["contents"].as_str().expect("contents"))
            .expect(".cargo-checksum.json is not JSON");
        assert_eq!(
            contents["package"], checksum,
            ".cargo-checksum.json of {dest}"
        );
    }
    assert_eq!(
        sources.len(),
        2 * registry.len() + 1,
        "one archive and one checksum per crate, one config"
    );
    let config = sources.last().expect("empty sources");
    assert_eq!(config["dest"], "cargo");
    assert_eq!(config["dest-filename"], "config");
    let text = config["contents"].as_str().expect("config contents");
    assert!(
        text.contains("replace-with = \"vendored-sources\"")
            && text.contains("directory = \"cargo/vendor\"")
    );
}

/// What meson installs for a profile: the app id, the binary name and the `-Dprofile` value.
struct Profile {
    app_id: String,
    binary: &'static str,
    option: &'static str,
}

fn profiles() -> [Profile; 2] {
    [
        Profile {
            app_id: BASE_ID.to_owned(),
            binary: "kiln",
            option: "-Dprofile=default",
        },
        Profile {
            app_id: format!("{BASE_ID}.Devel"),
            binary: "kiln-devel",
            option: "-Dprofile=development",
        },
    ]
}

#[test]
fn app_id_and_binary_names_agree_with_meson_and_data() {
    let meson = read("meson.build");
    assert!(
        meson.contains(&format!("base_id = '{BASE_ID}'")),
        "meson.build's base_id is not {BASE_ID}"
    );
    assert!(meson.contains("application_id = base_id + '.Devel'"));
    assert!(meson.contains("binary_name = 'kiln-devel'") && meson.contains("binary_name = 'kiln'"));
    let options = read("meson_options.txt");
    assert!(options.contains("'default'") && options.contains("'development'"));
    for file in [
        format!("data/{BASE_ID}.desktop.in"),
        format!("data/{BASE_ID}.metainfo.xml.in"),
        format!("data/{BASE_ID}.gschema.xml.in"),
        format!("data/icons/{BASE_ID}.svg"),
        format!("data/icons/{BASE_ID}.Devel.svg"),
        format!("data/icons/{BASE_ID}-symbolic.svg"),
    ] {
        assert!(root().join(&file).is_file(), "{file} is missing");
    }
    // The desktop file launches the installed binary and names the icon meson installs.
    let desktop = read(&format!("data/{BASE_ID}.desktop.in"));
    assert!(
        desktop.lines().any(|l| l.starts_with("Exec=@BINARY@")),
        "Exec= must run @BINARY@"
    );
    assert!(desktop.contains("Icon=@APP_ID@"));
}

#[test]
fn flatpak_manifests_are_complete_and_point_at_real_files() {
    for profile in profiles() {
        let name = format!("flatpak/{}.json", profile.app_id);
        let manifest: Value = serde_json::from_str(&read(&name))
            .unwrap_or_else(|e| panic!("{name} is not strict JSON: {e}"));
        let check = |ok: bool, what: &str| assert!(ok, "{name}: {what}");
        check(
            manifest["id"] == profile.app_id.as_str(),
            "id must be the file's app id",
        );
        check(
            manifest["runtime"] == "org.gnome.Platform",
            "runtime must be org.gnome.Platform",
        );
        check(
            manifest["sdk"] == "org.gnome.Sdk",
            "sdk must be org.gnome.Sdk",
        );
        let version = manifest["runtime-version"].as_str().unwrap_or_default();
        check(
            ["47", "48"].contains(&version),
            "runtime-version must be a current GNOME (47 or 48)",
        );
        check(
            manifest["sdk-extensions"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|x| x == "org.freedesktop.Sdk.Extension.rust-stable")
            }),
            "needs the rust-stable SDK extension",
        );
        check(
            manifest["build-options"]["append-path"]
                .as_str()
                .is_some_and(|p| p.contains("/usr/lib/sdk/rust-stable/bin")),
            "cargo from rust-stable must be on PATH",
        );
        check(
            manifest["command"] == profile.binary,
            "command must be the binary meson installs",
        );

        // Every permission says why, and nothing is explained that is not granted.
        let args: Vec<&str> = manifest["finish-args"]
            .as_array()
            .expect("finish-args")
            .iter()
            .map(|a| a.as_str().expect("finish-arg is a string"))
            .collect();
        let reasons = manifest["//finish-args"]
            .as_object()
            .expect("//finish-args explains each finish-arg");
        for arg in &args {
            let reason = reasons
                .get(*arg)
                .and_then(Value::as_str)
                .unwrap_or_default();
            check(
                reason.len() > 10,
                &format!("finish-arg {arg} has no reason in //finish-args"),
            );
        }
        check(
            reasons.len() == args.len(),
            "//finish-args explains a permission that is not granted",
        );
        for needed in [
            "--share=network",
            "--socket=wayland",
            "--socket=fallback-x11",
            "--share=ipc",
            "--device=dri",
        ] {
            check(
                args.contains(&needed),
                &format!("finish-args lacks {needed}"),
            );
        }
        check(
            !args.iter().any(|a| a.starts_with("--filesystem=host")),
            "no host file system access",
        );

        let modules = manifest["modules"].as_array().expect("modules");
        let kiln = modules
            .iter()
            .find(|m| m["name"] == "kiln")
            .expect("a module named kiln");
        check(kiln["buildsystem"] == "meson", "kiln builds with meson");
        check(
            kiln["config-opts"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == profile.option)),
            &format!("config-opts must pass {}", profile.option),
        );
        let sources = kiln["sources"].as_array().expect("sources");
        check(
            sources.iter().any(|s| s == "cargo-sources.json"),
            "sources must include cargo-sources.json",
        );
        for source in sources {
            let path = match source {
                Value::String(file) => Some(file.as_str()),
                other => other["path"].as_str(),
            };
            if let Some(path) = path {
                let target = root().join("flatpak").join(path);
                check(target.exists(), &format!("source {path} does not exist"));
                if source["type"] == "dir" {
                    check(
                        target.join("meson.build").is_file(),
                        "the dir source must be the checkout",
                    );
                }
            }
        }
        // The crate config from cargo-sources.json lands in <build dir>/cargo: CARGO_HOME.
        check(
            manifest["build-options"]["env"]["CARGO_HOME"] == "/run/build/kiln/cargo",
            "CARGO_HOME must be the kiln module's cargo dir",
        );
        let devel = profile.app_id.ends_with(".Devel");
        check(
            kiln["run-tests"].as_bool().unwrap_or(false) == devel,
            "only the Devel manifest runs the tests",
        );
    }
}

#[test]
fn systemd_unit_is_hardened_and_reads_its_token_from_a_credential() {
    let unit = read("data/kiln-server.service");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for needed in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "LoadCredential=token:/etc/kiln/token",
        "ExecStart=/usr/bin/kiln --server 51482 --token-file ${CREDENTIALS_DIRECTORY}/token",
    ] {
        assert!(
            settings.contains(&needed),
            "data/kiln-server.service lacks {needed}"
        );
    }
    // bwrap needs user namespaces: a RestrictNamespaces would break every sandboxed job.
    assert!(
        !settings
            .iter()
            .any(|s| s.starts_with("RestrictNamespaces="))
    );

    let Ok(output) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: skipping `systemd-analyze verify`");
        return;
    };
    assert!(output.status.success());
    // verify wants ExecStart's binary to exist: point it at the one cargo just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("kiln-server.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/kiln", env!("CARGO_BIN_EXE_kiln")),
    )
    .expect("write unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("kiln-server.service:"),
        "systemd-analyze verify data/kiln-server.service: {stderr}"
    );
}

#[test]
fn containerfile_builds_the_headless_server_that_compose_runs() {
    let containerfile = read("deploy/Containerfile");
    let compose = read("deploy/compose.yaml");
    assert!(
        compose.contains("dockerfile: deploy/Containerfile") && compose.contains("context: ..")
    );
    // The build context is the repository root (compose's `context: ..`): every COPY source
    // must exist there.
    let context = root();
    for line in containerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (sources, _dest) = words.split_at(words.len() - 1);
        for source in sources {
            assert!(
                context.join(source).exists(),
                "deploy/Containerfile copies {source}, which does not exist"
            );
        }
    }
    assert!(
        containerfile.contains("cargo build --release --locked --no-default-features --bin kiln")
    );
    assert!(containerfile.contains("FROM docker.io/library/debian:bookworm-slim"));
    let install = containerfile
        .lines()
        .find(|l| l.contains("apt-get install"))
        .expect("the runtime stage installs packages");
    for package in ["python3", "gcc", "g++", "bubblewrap"] {
        assert!(
            install.split_whitespace().any(|w| w == package),
            "runtime image lacks {package}"
        );
    }
    // compose passes `--server ... --node ...` as the command: the entrypoint must be the bare
    // binary, with `--server 51482` only as the default command.
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/bin/kiln\"]"));
    assert!(containerfile.contains("CMD [\"--server\", \"51482\"]"));
    assert!(containerfile.contains("COPY --from=build /src/target/release/kiln /usr/bin/kiln"));
}

#[test]
fn version_line_names_the_version_and_the_commit_when_built_from_git() {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--version")
        .output()
        .expect("run kiln --version");
    assert!(output.status.success());
    let line = String::from_utf8_lossy(&output.stdout);
    let expected = format!("kiln {}", env!("CARGO_PKG_VERSION"));
    assert!(
        line.starts_with(&expected),
        "kiln --version printed {line:?}"
    );
    let in_git = Command::new("git")
        .current_dir(root())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    if std::env::var_os("KILN_GIT_COMMIT").is_none()
        && let Some(commit) = in_git
    {
        let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
        assert!(
            line.contains(&format!("({commit}")),
            "kiln --version {line:?} lacks commit {commit}"
        );
    }
}

#[test]
fn flatpak_builder_reads_the_manifests_without_warnings() {
    // flatpak-builder's own parser (json-glib into GObject properties) warns on every unknown key,
    // so a misspelt property shows up here; `.ci/install-check` installs it when missing.
    if Command::new("flatpak-builder")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("flatpak-builder not installed: skipping --show-manifest");
        return;
    }
    let expected_sources = 1 + cargo_sources().len();
    for profile in profiles() {
        let name = format!("flatpak/{}.json", profile.app_id);
        // It leaves a .flatpak-builder state dir in its working directory: keep that out of the tree.
        let scratch = tempfile::tempdir().expect("tempdir");
        let output = Command::new("flatpak-builder")
            .current_dir(scratch.path())
            .arg("--show-manifest")
            .arg(root().join(&name))
            .output()
            .expect("run flatpak-builder --show-manifest");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !stderr.contains("WARNING"),
            "flatpak-builder --show-manifest {name}: {stderr}"
        );
        let shown: Value =
            serde_json::from_slice(&output.stdout).expect("--show-manifest prints JSON");
        assert_eq!(shown["id"], profile.app_id.as_str());
        // The cargo-sources.json reference was found and expanded in place.
        let sources = shown["modules"][0]["sources"].as_array().expect("sources");
        assert_eq!(
            sources.len(),
            expected_sources,
            "{name}: the checkout plus every crate source"
        );
    }
}
