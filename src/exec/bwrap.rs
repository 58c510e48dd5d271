//! The bubblewrap sandbox: every compile and every program runs in fresh user, pid, network, IPC
//! and UTS namespaces, sees the system read-only, its toolchain read-only, a private `/tmp` and
//! `/dev`, and can write only its job directory (a compiler) or a size-limited scratch copy of it (a
//! program). It implements [`Sandbox`], so the runner (`super::process`) applies its rlimits,
//! deadline and process-group kill on top unchanged.
//!
//! When the server runs as root, each job runs as its own unprivileged user, leased from a range of
//! ids (see [`UidPool`]), so RLIMIT_NPROC bounds exactly that job and jobs cannot touch each
//! other's files. Toolchains under directories that user cannot enter (pyenv under `/root`) are
//! bound, in a private mount namespace of the child before it drops root, onto a staging directory
//! it can reach; bubblewrap then binds that onto the toolchain's real path inside the sandbox.
//! [`detect`] checks at start-up that all this works on this host and explains the fix if not.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use thiserror::Error;

use super::cache::CompileCache;
use super::jobdir::JobDir;
use super::limits::Limits;
use super::process::{self, CommandSpec, ExitKind};
use super::sandbox::{JobUser, NoSandbox, Sandbox, SandboxCommand};
use super::{Executor, JobEvent, JobSink};

/// First user id of the range jobs run as when the server is root. Far above the ranges Debian
/// gives people (1000–59999), system services and the usual subordinate ids of containers
/// (100000 onwards, 65536 each), so no file on the host belongs to these users.
pub const DEFAULT_UID_BASE: u32 = 2_000_000_000;
/// How many job users the range holds: the most jobs that can run at once.
pub const DEFAULT_UID_COUNT: u32 = 4096;
/// Size of the private `/tmp` of a compiler.
const COMPILE_TMP_BYTES: u64 = 512 * 1024 * 1024;
/// What the sandbox's pid 1 runs: the program as its child, then exit with its status (a signal
/// N as 128 + N, which [`BwrapSandbox::decode_exit`] turns back).
const INIT_SCRIPT: &str = "\"$@\"; exit $?";
/// Room in a program's scratch directory beyond the file-size limit.
const SCRATCH_SLACK_BYTES: u64 = 1024 * 1024;
/// The user a job falls back to if its directory was never prepared (it then cannot write it, and
/// fails visibly rather than running as root).
const NOBODY: u32 = 65534;

/// System directories bound read-only at the same path (those that exist).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// Files and directories of `/etc` that programs and compilers need; the rest of `/etc` (shadow,
/// the server's configuration) stays out of sight.
/// (Each bind costs time on every run, so only these: `cc` and friends are links through
/// `/etc/alternatives`; the loader's cache finds libraries fast. Without `/etc/localtime` jobs
/// run in UTC.)
const ETC_ENTRIES: &[&str] = &["/etc/alternatives", "/etc/ld.so.cache"];

/// Why the bubblewrap sandbox cannot be used on this host.
#[derive(Debug, Error)]
pub enum SandboxUnavailable {
    /// The operator turned it off (`--no-sandbox`).
    #[error("the sandbox was turned off with --no-sandbox")]
    Disabled,
    /// No `bwrap` executable.
    #[error(
        "bubblewrap (`bwrap`) is not installed; install it (Debian/Ubuntu: `apt install bubblewrap`, Fedora: `dnf install bubblewrap`)"
    )]
    NotInstalled,
    /// `bwrap` exists but could not start a sandbox.
    #[error("bubblewrap cannot create a sandbox on this host: {detail}\n{hint}")]
    Broken {
        /// What bwrap said, or how it ended.
        detail: String,
        /// How to fix it.
        hint: String,
    },
    /// The self-test could not even be set up.
    #[error("cannot test the sandbox: {0}")]
    Setup(#[from] io::Error),
}

/// A directory the job needs read-only outside the system directories (a toolchain).
#[derive(Debug, Clone)]
struct ToolchainMount {
    /// Its path, outside and inside the sandbox.
    path: PathBuf,
    /// Where it is staged for a job user that cannot reach `path`, if it must be.
    stage: Option<PathBuf>,
}

/// What the child does as root before it drops to the job's user.
#[derive(Debug, Default)]
struct RootSetup {
    /// A mount namespace, made once at start-up, where the hidden toolchains are bound onto their
    /// staging directories; each job's child enters it (cheap) instead of making its own.
    staged: Option<OwnedFd>,
}

/// Runs every process in a bubblewrap sandbox.
#[derive(Debug)]
pub struct BwrapSandbox {
    bwrap: PathBuf,
    /// Whether this bwrap can forbid user namespaces inside the sandbox (`--disable-userns`,
    /// bubblewrap 0.8 and later).
    disables_userns: bool,
    /// Whether jobs run under the seccomp filter of [`super::seccomp`].
    seccomp: bool,
    toolchains: Vec<ToolchainMount>,
    root_setup: Arc<RootSetup>,
    users: Option<Arc<UidPool>>,
    /// Holds the staging directories; removed when the sandbox is dropped.
    _staging: Option<tempfile::TempDir>,
}

impl BwrapSandbox {
    /// A sandbox that shows the job `read_only` (toolchain directories) besides the system.
    /// Running as root, jobs run as users from `DEFAULT_UID_BASE`.
    ///
    /// # Errors
    /// When bwrap is missing or the staging directory cannot be made.
    pub fn new(read_only: &[PathBuf]) -> Result<BwrapSandbox, SandboxUnavailable> {
        let bwrap = find_bwrap().ok_or(SandboxUnavailable::NotInstalled)?;
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut toolchains: Vec<ToolchainMount> = Vec::new();
        let mut staging = None;
        let mut stages = Vec::new();
        for path in read_only {
            if toolchains.iter().any(|t| path.starts_with(&t.path)) || is_system_path(path) {
                continue;
            }
            let needs_stage = root && !reachable_by_others(path);
            let stage = if needs_stage {
                if staging.is_none() {
                    // In the process directory, so a killed server's staging is swept too.
                    let dir = tempfile::Builder::new()
                        .prefix("toolchains-")
                        .tempdir_in(super::jobdir::process_dir()?)?;
                    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
                    staging = Some(dir);
                }
                let Some(dir) = staging.as_ref() else {
                    continue;
                };
                let stage = dir.path().join(toolchains.len().to_string());
                fs::create_dir(&stage)?;
                fs::set_permissions(&stage, fs::Permissions::from_mode(0o755))?;
                stages.push((c_path(path)?, c_path(&stage)?));
                Some(stage)
            } else {
                None
            };
            toolchains.push(ToolchainMount {
                path: path.clone(),
                stage,
            });
        }
        let disables_userns = supports_disable_userns(&bwrap);
        if !disables_userns {
            tracing::warn!(
                "this bubblewrap cannot forbid user namespaces inside the sandbox (needs 0.8 or later): jobs can make their own"
            );
        }
        Ok(BwrapSandbox {
            bwrap,
            disables_userns,
            seccomp: super::seccomp::program().is_some(),
            toolchains,
            root_setup: Arc::new(RootSetup {
                staged: if stages.is_empty() {
                    None
                } else {
                    Some(staging_namespace(stages)?)
                },
            }),
            users: root.then(job_users),
            _staging: staging,
        })
    }

    /// Runs `/bin/true` in the sandbox once, in a job directory under `jobs_root`, to learn whether
    /// this host allows it.
    ///
    /// # Errors
    /// With what went wrong and how to fix it.
    pub fn self_test(&self, jobs_root: &Path) -> Result<(), SandboxUnavailable> {
        let dir = JobDir::create(jobs_root)?;
        let _user = self.prepare(dir.path())?;
        let limits = Limits {
            wall: Duration::from_secs(10),
            ..Limits::default()
        };
        let spec = CommandSpec::new("/bin/true", Vec::<OsString>::new());
        let mut sink = Discard;
        let outcome = process::run(self, &spec, dir.path(), None, &limits, &mut sink, false)?;
        if outcome.exit == ExitKind::Code(0) {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&outcome.captured_stderr)
            .trim()
            .to_owned();
        let detail = if said.is_empty() {
            format!("`bwrap ... /bin/true` ended with {:?}", outcome.exit)
        } else {
            said
        };
        Err(SandboxUnavailable::Broken {
            hint: userns_hint(),
            detail,
        })
    }

    fn job_uid(&self, job_dir: &Path) -> u32 {
        let owner = fs::metadata(job_dir).map_or(NOBODY, |meta| meta.uid());
        if owner == 0 { NOBODY } else { owner }
    }
}

/// Finds `bwrap` on the PATH or in the usual places.
/// Whether `bwrap --help` lists `--disable-userns`.
/// Asked once per process: every sandbox a process makes (the app restarts its server when the
/// settings change) uses the same bwrap.
fn supports_disable_userns(bwrap: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        Command::new(bwrap)
            .arg("--help")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .is_ok_and(|output| {
                String::from_utf8_lossy(&output.stdout).contains("--disable-userns")
            })
    })
}

impl BwrapSandbox {
    /// Whether jobs run under the seccomp filter (refusing the calls [`super::seccomp::refused`]
    /// lists).
    pub fn filters_syscalls(&self) -> bool {
        self.seccomp
    }

    /// Whether jobs are kept from making user namespaces of their own (and with them new mount,
    /// network and other namespaces: the kernel's largest attack surface for unprivileged code).
    pub fn disables_userns(&self) -> bool {
        self.disables_userns
    }
}

fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into(), "/bin".into()])
        .map(|dir| dir.join("bwrap"))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
        })
}

fn is_system_path(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir))
}

/// Whether every directory above `path` lets other users through.
fn reachable_by_others(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|dir| fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// The advice when bwrap is installed but fails, with what this host's settings say.
fn userns_hint() -> String {
    let read = |path: &str| fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
    let mut hint = String::from(
        "The usual cause is that unprivileged user namespaces are disabled. To allow them:",
    );
    match read("/proc/sys/kernel/unprivileged_userns_clone") {
        Some(value) if value == "0" => hint.push_str(
            "\n  sysctl -w kernel.unprivileged_userns_clone=1   (it is 0 here; Debian's switch)",
        ),
        _ => hint.push_str("\n  sysctl -w kernel.unprivileged_userns_clone=1   (Debian kernels)"),
    }
    match read("/proc/sys/user/max_user_namespaces") {
        Some(value) if value == "0" => {
            hint.push_str("\n  sysctl -w user.max_user_namespaces=15000   (it is 0 here)");
        }
        _ => {}
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        hint.push_str(
            "\n  sysctl -w kernel.apparmor_restrict_unprivileged_userns=0   (it is 1 here; Ubuntu 23.10+), or give bwrap an AppArmor profile",
        );
    }
    hint.push_str(
        "\nIn a container, run it with user namespaces allowed (e.g. not under Docker's default seccomp profile).",
    );
    hint
}

struct Discard;

impl JobSink for Discard {
    fn send(&mut self, _event: JobEvent<'_>) -> io::Result<()> {
        Ok(())
    }
}

impl Sandbox for BwrapSandbox {
    fn name(&self) -> &str {
        "bwrap"
    }

    fn command(&self, spec: &CommandSpec, job_dir: &Path) -> SandboxCommand {
        let mut command = Command::new(&self.bwrap);
        let mut inherit = Vec::new();
        // bwrap itself gets nothing from the server's environment either.
        command.env_clear().current_dir("/");
        command.args([
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            "kiln",
            "--die-with-parent",
            "--new-session",
            "--as-pid-1",
        ]);
        if self.disables_userns {
            command.arg("--disable-userns");
        }
        if self.seccomp {
            match super::seccomp::program_file() {
                Ok(filter) => {
                    command.arg("--seccomp").arg(filter.as_raw_fd().to_string());
                    inherit.push(filter);
                }
                Err(error) => {
                    tracing::warn!(%error, "no seccomp filter for this job");
                }
            }
        }
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = fs::read_link(path) {
                        command.arg("--symlink").arg(target).arg(path);
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    command.arg("--ro-bind").arg(path).arg(path);
                }
                _ => {}
            }
        }
        for entry in ETC_ENTRIES {
            command.args(["--ro-bind-try", entry, entry]);
        }
        let tmp_bytes = spec
            .scratch
            .unwrap_or(COMPILE_TMP_BYTES)
            .max(4096)
            .to_string();
        command.args(["--proc", "/proc", "--dev", "/dev"]);
        // bwrap's /dev is a tmpfs the job's user could fill: only /dev/shm stays writable, bounded.
        command.args([
            "--size",
            &tmp_bytes,
            "--tmpfs",
            "/dev/shm",
            "--remount-ro",
            "/dev",
        ]);
        command.args(["--size", &tmp_bytes, "--tmpfs", "/tmp"]);
        match spec.scratch {
            None => {
                command.arg("--bind").arg(job_dir).arg(job_dir);
            }
            Some(bytes) => {
                // A program gets a private, size-limited copy of its directory: the files the
                // compiler left, read-only, and room for what it writes, gone when it ends.
                // One file may reach the file-size limit (RLIMIT_FSIZE stops it, with a clear
                // verdict); the slack keeps the tmpfs from filling a page before that.
                let size = bytes.saturating_add(SCRATCH_SLACK_BYTES);
                command
                    .args(["--size", &size.to_string(), "--tmpfs"])
                    .arg(job_dir);
                if let Ok(entries) = fs::read_dir(job_dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
                            let path = entry.path();
                            command.arg("--ro-bind").arg(&path).arg(&path);
                        }
                    }
                }
            }
        }
        for toolchain in &self.toolchains {
            let source = toolchain.stage.as_deref().unwrap_or(&toolchain.path);
            command.arg("--ro-bind").arg(source).arg(&toolchain.path);
        }
        // bwrap's root is a tmpfs the job's user owns: read-only, so it cannot grow.
        command.args(["--remount-ro", "/"]);
        command.arg("--chdir").arg(job_dir);
        command.args([
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
        ]);
        command.arg("--setenv").arg("HOME").arg(job_dir);
        command.args(["--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8"]);
        for (key, value) in &spec.env {
            command.arg("--setenv").arg(key).arg(value);
        }
        // The namespace's init is a shell that waits for the program: unlike bwrap's own init, it
        // is reaped by bwrap, so the program's CPU time and peak memory reach the runner's wait4;
        // and the program is not pid 1, so it keeps the usual signal behaviour. When the shell
        // ends, the kernel kills whatever is left in the namespace.
        command
            .args(["--", "/bin/sh", "-c", INIT_SCRIPT, "kiln-init"])
            .arg(&spec.program)
            .args(&spec.args);
        if self.users.is_some() {
            let uid = self.job_uid(job_dir);
            let setup = Arc::clone(&self.root_setup);
            // SAFETY: the closure makes only async-signal-safe system calls (unshare, mount,
            // setgroups, setgid, setuid) on data prepared before the fork.
            unsafe {
                command.pre_exec(move || setup.drop_root(uid));
            }
        }
        SandboxCommand { command, inherit }
    }

    fn prepare(&self, job_dir: &Path) -> io::Result<JobUser> {
        let Some(users) = &self.users else {
            return Ok(JobUser::current());
        };
        let user = users.lease()?;
        std::os::unix::fs::chown(job_dir, Some(user.uid()), Some(user.uid()))?;
        Ok(user)
    }

    fn decode_exit(&self, exit: ExitKind) -> ExitKind {
        // bwrap reports a program killed by signal N as exit code 128 + N (as shells do).
        match exit {
            ExitKind::Code(code) if (129..=128 + 64).contains(&code) => {
                ExitKind::Signal(code - 128)
            }
            other => other,
        }
    }
}

/// Makes the mount namespace where each `(source, stage)` pair is bound: a helper process unshares
/// its mount namespace (a slave of the host's, so nothing propagates back), makes the bind mounts
/// and sleeps; the namespace outlives it through the descriptor returned.
fn staging_namespace(stages: Vec<(CString, CString)>) -> io::Result<OwnedFd> {
    let mut helper = Command::new("/bin/sleep");
    helper
        .arg("60")
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure makes only async-signal-safe system calls (unshare, mount) on strings
    // prepared before the fork.
    unsafe {
        helper.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (source, stage) in &stages {
                check(libc::mount(
                    source.as_ptr(),
                    stage.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            Ok(())
        });
    }
    let mut child = helper.spawn()?;
    let namespace = fs::File::open(format!("/proc/{}/ns/mnt", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    Ok(OwnedFd::from(namespace?))
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl RootSetup {
    /// In the forked child, still root: enters the staging namespace, then becomes `uid`.
    fn drop_root(&self, uid: u32) -> io::Result<()> {
        // SAFETY: plain system calls on a descriptor `self` owns and no pointers.
        unsafe {
            if let Some(namespace) = &self.staged {
                check(libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNS))?;
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(uid))?;
            check(libc::setuid(uid))?;
        }
        Ok(())
    }
}

/// A range of user ids for jobs; each running job holds one.
#[derive(Debug)]
pub struct UidPool {
    base: u32,
    used: Mutex<Vec<bool>>,
}

impl UidPool {
    /// The ids `base .. base + count`.
    pub fn new(base: u32, count: u32) -> UidPool {
        UidPool {
            base,
            used: Mutex::new(vec![false; count as usize]),
        }
    }

    /// The first id of the range.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// How many ids the range holds.
    pub fn len(&self) -> usize {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reserves a free id until the returned user is dropped.
    ///
    /// # Errors
    /// When every id is taken.
    pub fn lease(self: &Arc<Self>) -> io::Result<JobUser> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = used.iter().position(|taken| !taken) else {
            return Err(io::Error::other(format!(
                "all {} job users ({}..) are taken: too many jobs at once",
                used.len(),
                self.base
            )));
        };
        used[slot] = true;
        drop(used);
        let pool = Arc::clone(self);
        let uid = self.base + slot as u32;
        Ok(JobUser::leased(uid, move || {
            let mut used = pool.used.lock().unwrap_or_else(PoisonError::into_inner);
            used[slot] = false;
        }))
    }
}

/// The process's one pool of job users, shared by every sandbox in it (tests start several servers).
fn job_users() -> Arc<UidPool> {
    static POOL: OnceLock<Arc<UidPool>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(|| Arc::new(UidPool::new(DEFAULT_UID_BASE, DEFAULT_UID_COUNT))))
}

/// Whether `uid` belongs to the job users of a root server.
pub fn is_job_uid(uid: u32) -> bool {
    (DEFAULT_UID_BASE..DEFAULT_UID_BASE + DEFAULT_UID_COUNT).contains(&uid)
}

/// The bwrap sandbox for these toolchain directories if it works on this host.
///
/// # Errors
/// Why it does not, with the fix.
pub fn detect(read_only: &[PathBuf], jobs_root: &Path) -> Result<BwrapSandbox, SandboxUnavailable> {
    let mut sandbox = BwrapSandbox::new(read_only)?;
    if let Err(error) = sandbox.self_test(jobs_root) {
        if !sandbox.seccomp {
            return Err(error);
        }
        // A kernel without seccomp filters still gets the namespaces.
        sandbox.seccomp = false;
        sandbox.self_test(jobs_root)?;
        tracing::warn!(%error, "the sandbox works without its seccomp filter only");
    }
    Ok(sandbox)
}

/// An executor with the languages found on this machine, the compile cache in its usual place,
/// and bubblewrap if it works here; otherwise no sandbox, and why not.
///
/// # Errors
/// If the root for job directories cannot be created.
pub fn detect_executor() -> io::Result<(Executor, Option<SandboxUnavailable>)> {
    detect_executor_with(true)
}

/// As [`detect_executor`], or without trying the sandbox at all when `sandbox` is false (jobs
/// that must reach the network or the host, from trusted clients only).
///
/// # Errors
/// If the root for job directories cannot be created.
pub fn detect_executor_with(sandbox: bool) -> io::Result<(Executor, Option<SandboxUnavailable>)> {
    let languages = super::detect_toolchains();
    let read_only: Vec<PathBuf> = languages
        .iter()
        .flat_map(|language| language.read_only_paths())
        .collect();
    let jobs_root = super::jobdir::create_root()?;
    let detected = if sandbox {
        detect(&read_only, &jobs_root)
    } else {
        Err(SandboxUnavailable::Disabled)
    };
    let (sandbox, unavailable): (Arc<dyn Sandbox>, _) = match detected {
        Ok(bwrap) => (Arc::new(bwrap), None),
        Err(why) => (Arc::new(NoSandbox), Some(why)),
    };
    let mut executor = Executor::with_languages(languages, sandbox)?;
    match CompileCache::open(CompileCache::default_dir(), super::cache::DEFAULT_MAX_BYTES) {
        Ok(cache) => executor = executor.with_cache(cache),
        Err(error) => tracing::warn!(%error, "no compile cache"),
    }
    Ok((executor, unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_come_back_from_exit_codes() {
        let sandbox = BwrapSandbox {
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            disables_userns: true,
            seccomp: true,
            toolchains: Vec::new(),
            root_setup: Arc::new(RootSetup::default()),
            users: None,
            _staging: None,
        };
        assert_eq!(
            sandbox.decode_exit(ExitKind::Code(139)),
            ExitKind::Signal(libc::SIGSEGV)
        );
        assert_eq!(sandbox.decode_exit(ExitKind::Code(3)), ExitKind::Code(3));
        assert_eq!(
            sandbox.decode_exit(ExitKind::Signal(libc::SIGKILL)),
            ExitKind::Signal(libc::SIGKILL)
        );
    }

    #[test]
    fn the_uid_pool_hands_out_each_id_once() {
        let pool = Arc::new(UidPool::new(5000, 2));
        let a = pool.lease().expect("first");
        let b = pool.lease().expect("second");
        assert_ne!(a.uid(), b.uid());
        let error = pool.lease().expect_err("full");
        assert!(error.to_string().contains("all 2 job users"));
        drop(a);
        assert_eq!(pool.lease().expect("freed").uid(), 5000);
    }
}
