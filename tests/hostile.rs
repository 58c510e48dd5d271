//! The hostile-program suite: programs that try to harm the server or its host, each run through
//! a real server (127.0.0.1, ephemeral port) with the bubblewrap sandbox and short limits. Each
//! case asserts its verdict and that the server still answers PING; after all of them the test
//! asserts that nothing is left over: no processes, no job directories, no file descriptors.
//!
//! These programs never run outside the sandbox: without a working bwrap the suite is skipped with
//! a loud message (and fails instead when `CI` is set, since CI installs bubblewrap).
//!
//! The cases run one after another inside one test so that the leftover checks at the end see
//! the whole suite and nothing running beside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::client::{Client, Event, JobResult, JobSpec};
use kiln::exec::bwrap::{self, BwrapSandbox};
use kiln::exec::cache::CompileCache;
use kiln::exec::{Executor, Limits};
use kiln::protocol::{Intent, Verdict};
use kiln::server::{self, ServerConfig, ServerHandle, Token};

const TOKEN: &str = "hostile-suite-token-5f2d1c";

/// A sandboxed executor, or `None` (after saying so loudly) when bwrap does not work here.
fn sandbox_or_skip(jobs_root: &Path) -> Option<BwrapSandbox> {
    let languages = kiln::exec::detect_toolchains();
    let read_only: Vec<PathBuf> = languages.iter().flat_map(|l| l.read_only_paths()).collect();
    match bwrap::detect(&read_only, jobs_root) {
        Ok(sandbox) => Some(sandbox),
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the sandbox must work in CI: {why}"
            );
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPING the hostile-program suite: bubblewrap does not work here !!!\n\
                 !!! {why}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

fn short_limits() -> Limits {
    Limits {
        wall: Duration::from_millis(2000),
        cpu: Duration::from_millis(2000),
        memory_mib: 256,
        processes: 32,
        file_size: 16 * 1024 * 1024,
        output_bytes: 1024 * 1024,
        open_files: 64,
    }
}

struct Suite {
    handle: Option<ServerHandle>,
    client: Client,
    jobs_root: PathBuf,
    token_file: PathBuf,
    server_pid: u32,
    /// Whether the sandbox forbids user namespaces (bubblewrap 0.8 and later).
    disables_userns: bool,
    /// Whether jobs run under the seccomp filter.
    filters_syscalls: bool,
    failures: Vec<String>,
}

/// What a run gave back.
struct Ran {
    result: JobResult,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    diagnostics: String,
}

impl Ran {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.result.fields.get(key)
    }
}

impl Suite {
    fn run(&self, language: &str, source: &str) -> Ran {
        let mut job = JobSpec::code(Intent::Run, language, source.as_bytes().to_vec());
        job.head.time_limit_ms = Some(2000);
        let (events, result) = self
            .client
            .run_to_end(&job)
            .unwrap_or_else(|error| panic!("the server must answer a {language} job: {error}"));
        let mut ran = Ran {
            result,
            stdout: Vec::new(),
            stderr: Vec::new(),
            diagnostics: String::new(),
        };
        for event in events {
            match event {
                Event::Stdout(bytes) => ran.stdout.extend(bytes),
                Event::Stderr(bytes) => ran.stderr.extend(bytes),
                Event::Diagnostics(text) => ran.diagnostics.push_str(&text),
                _ => {}
            }
        }
        ran
    }

    /// Runs a job while checking, every 200 ms, that the server still answers PING quickly.
    fn run_while_pinging(&self, language: &str, source: &str) -> Result<Ran, String> {
        std::thread::scope(|scope| {
            let job = scope.spawn(|| self.run(language, source));
            let mut pings = 0;
            while !job.is_finished() {
                let started = Instant::now();
                match self.client.ping() {
                    Ok(_) if started.elapsed() < Duration::from_secs(1) => pings += 1,
                    Ok(_) => {
                        return Err(format!(
                            "PING took {} ms while the job ran",
                            started.elapsed().as_millis()
                        ));
                    }
                    Err(error) => return Err(format!("PING failed while the job ran: {error}")),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let ran = job
                .join()
                .map_err(|_| "the job thread panicked".to_owned())?;
            if pings == 0 {
                return Err("the job ended before any PING was sent".into());
            }
            Ok(ran)
        })
    }

    /// Runs one case: its own checks, then PING. A failure is recorded, not fatal, so one broken
    /// case does not hide the others.
    fn case(&mut self, name: &str, check: impl FnOnce(&Suite) -> Result<(), String>) {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(self)));
        let verdict = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(message),
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into())),
        };
        let ping = self.client.ping();
        eprintln!(
            "hostile: {name}: {} in {} ms; ping {}",
            if verdict.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_millis(),
            match &ping {
                Ok(rtt) => format!("{} µs", rtt.as_micros()),
                Err(error) => format!("FAILED: {error}"),
            }
        );
        if let Err(message) = verdict {
            self.failures.push(format!("{name}: {message}"));
        }
        if let Err(error) = ping {
            self.failures.push(format!(
                "{name}: the server no longer answers PING: {error}"
            ));
        }
    }
}

fn expect_verdict(ran: &Ran, wanted: &[Verdict]) -> Result<(), String> {
    if wanted.contains(&ran.result.verdict) {
        Ok(())
    } else {
        Err(format!(
            "verdict {} (wanted one of {wanted:?}); result {:?}; stdout {:?}; stderr {:?}; diagnostics {:?}",
            ran.result.verdict,
            ran.result.fields,
            String::from_utf8_lossy(&ran.stdout[..ran.stdout.len().min(300)]),
            String::from_utf8_lossy(&ran.stderr[..ran.stderr.len().min(300)]),
            ran.diagnostics.chars().take(300).collect::<String>(),
        ))
    }
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Processes that belong to jobs: run by a job user (when the server is root) or naming the jobs
/// root in their command line or working directory.
fn job_processes(jobs_root: &Path) -> Vec<String> {
    let root = jobs_root.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path();
        let cmdline = std::fs::read(path.join("cmdline"))
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(path.join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let uid = std::fs::metadata(&path).map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m));
        // Job users are shared by every Kiln server on the host: a job of another server (one a
        // previous test killed, say) names its own jobs root and is not this suite's.
        let other_server = cmdline.contains("/kiln-") && !cmdline.contains(&root);
        if (bwrap::is_job_uid(uid) && !other_server)
            || cmdline.contains(&root)
            || cwd.starts_with(&root)
        {
            found.push(format!("pid {name} uid {uid}: {cmdline}"));
        }
    }
    found
}

/// Whether the sandbox has `feature` (`present`): CI's must, so there its absence fails the case;
/// elsewhere the case says what the program saw and is skipped.
fn sandbox_has(present: bool, feature: &str, seen: &str) -> Result<bool, String> {
    if present {
        return Ok(true);
    }
    ensure(std::env::var_os("CI").is_none(), || {
        format!("the sandbox in CI must have {feature}")
    })?;
    eprintln!("  (the sandbox here lacks {feature}: {})", seen.trim());
    Ok(false)
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_programs_do_no_harm() {
    // The process directory's lock stays open for the process's life: open it before counting.
    let jobs_root = kiln::exec::jobdir::create_root().expect("jobs root");
    let fds_before = open_fds();
    let Some(sandbox) = sandbox_or_skip(&jobs_root) else {
        return;
    };
    let disables_userns = sandbox.disables_userns();
    let filters_syscalls = sandbox.filters_syscalls();
    let secrets = tempfile::tempdir().expect("tempdir");
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let cache = tempfile::tempdir().expect("cache dir");
    let executor = Executor::with_languages(kiln::exec::detect_toolchains(), Arc::new(sandbox))
        .expect("executor")
        .with_compile_limits(Limits {
            wall: Duration::from_secs(4),
            cpu: Duration::from_secs(4),
            ..Limits::compile_default()
        })
        .with_cache(CompileCache::open(cache.path(), 64 * 1024 * 1024).expect("cache"));
    let mut config = ServerConfig::loopback();
    config.workers = 2;
    config.max_jobs_per_peer = 2;
    config.token = Token::new(TOKEN);
    config.run_defaults = short_limits();
    config.run_max = short_limits();
    config.grace = Duration::from_secs(1);
    let handle = server::start_with_executor(config, Arc::new(executor)).expect("server starts");
    let client = Client::new(handle.local_addr().to_string(), Some(TOKEN.to_owned()))
        .with_read_timeout(Some(Duration::from_secs(30)));
    assert_eq!(
        client.info().expect("info").get("sandbox"),
        Some("bwrap"),
        "INFO must say the jobs are sandboxed"
    );
    let port = handle.local_addr().port();
    let mut suite = Suite {
        handle: Some(handle),
        client,
        jobs_root: jobs_root.clone(),
        token_file,
        server_pid: std::process::id(),
        disables_userns,
        filters_syscalls,
        failures: Vec::new(),
    };

    suite.case("fork bomb", |s| {
        let ran = s.run_while_pinging(
            "c",
            "#include <unistd.h>\nint main(void) { for (;;) fork(); }\n",
        )?;
        expect_verdict(&ran, &[Verdict::TimeLimit])
    });

    suite.case("infinite loop", |s| {
        let ran = s.run("python", "while True:\n    pass\n");
        expect_verdict(&ran, &[Verdict::TimeLimit])?;
        ensure(
            ran.field("message").is_some_and(|m| m.contains("limit")),
            || {
                format!(
                    "the message should name the limit: {:?}",
                    ran.field("message")
                )
            },
        )
    });

    suite.case("busy loop in many threads", |s| {
        let ran = s.run_while_pinging(
            "c",
            "#include <pthread.h>\n\
             static void *spin(void *arg) { for (;;) { __asm__ volatile(\"\"); } return arg; }\n\
             int main(void) { pthread_t t[16]; for (int i = 0; i < 16; i++) pthread_create(&t[i], 0, spin, 0); spin(0); }\n",
        )?;
        expect_verdict(&ran, &[Verdict::TimeLimit])
    });

    suite.case("allocating 10 GiB", |s| {
        let ran = s.run("python", "data = bytearray(10 * 2**30)\nprint(len(data))\n");
        expect_verdict(&ran, &[Verdict::MemoryLimit])
    });

    suite.case("writing 1 GiB to stdout", |s| {
        let ran = s.run(
            "c",
            "#include <unistd.h>\n#include <string.h>\n\
             static char buf[1 << 20];\n\
             int main(void) { memset(buf, 'x', sizeof buf); for (int i = 0; i < 1024; i++) if (write(1, buf, sizeof buf) < 0) return 1; return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::OutputLimit])?;
        ensure(ran.stdout.len() <= 1024 * 1024, || {
            format!("{} bytes of output passed the 1 MiB cap", ran.stdout.len())
        })?;
        ensure(ran.field("truncated") == Some("stdout"), || {
            format!("truncated should be stdout: {:?}", ran.field("truncated"))
        })
    });

    suite.case("writing a huge file", |s| {
        let ran = s.run(
            "c",
            "#include <stdio.h>\n\
             static char buf[1 << 20];\n\
             int main(void) { FILE *f = fopen(\"huge\", \"w\"); if (!f) return 2;\n\
               for (int i = 0; i < 100000; i++) if (fwrite(buf, 1, sizeof buf, f) != sizeof buf || fflush(f)) { perror(\"write\"); return 3; }\n\
               return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::OutputLimit])
    });

    suite.case("filling the disk with many files", |s| {
        let ran = s.run(
            "python",
            "import os\nchunk = b'x' * (1 << 20)\n\
             for d in ('.', '/tmp', '/dev/shm'):\n    \
                 for i in range(100000):\n        \
                     try:\n            \
                         with open(os.path.join(d, f'fill{i}'), 'wb') as f:\n                f.write(chunk)\n        \
                     except OSError as e:\n            \
                         print(d, 'stopped after', i, 'MiB:', e.strerror)\n            break\n",
        );
        expect_verdict(&ran, &[Verdict::Ok])?;
        let text = ran.stdout_text();
        let bounded = text.lines().count() == 3
            && text.lines().all(|line| {
                line.split_whitespace()
                    .nth(3)
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|mib| mib <= 17)
            });
        ensure(bounded, || format!("the scratch space was not bounded: {text:?}"))
    });

    suite.case(
        "connecting to 127.0.0.1 and to an outside address",
        move |s| {
            let source = format!(
                "import socket\n\
             for host, port in (('127.0.0.1', {port}), ('192.0.2.1', 80), ('10.0.0.1', 53)):\n    \
                 try:\n        \
                     socket.create_connection((host, port), timeout=1).close()\n        \
                     print('CONNECTED', host)\n    \
                 except OSError as e:\n        \
                     print('failed', host, e)\n"
            );
            let ran = s.run("python", &source);
            expect_verdict(&ran, &[Verdict::Ok])?;
            let text = ran.stdout_text();
            ensure(
                !text.contains("CONNECTED") && text.matches("failed").count() == 3,
                || format!("a connection went through: {text:?}"),
            )
        },
    );

    suite.case("reading /etc/shadow, the token file and $HOME", |s| {
        let token_file = s.token_file.display().to_string();
        let source = format!(
            "import os\n\
             for path in ('/etc/shadow', '/etc/passwd', {token_file:?}, '/root/.bash_history', '/proc/1/environ'):\n    \
                 try:\n        \
                     print('READ', path, open(path, 'rb').read()[:200])\n    \
                 except OSError as e:\n        \
                     print('denied', path, e.strerror)\n\
             for path in ('/root', '/home', os.path.expanduser('~')):\n    \
                 try:\n        \
                     print('LIST', path, os.listdir(path))\n    \
                 except OSError as e:\n        \
                     print('denied', path, e.strerror)\n\
             print('fds', sorted(os.listdir('/proc/self/fd')))\n\
             print('uid', os.getuid(), os.geteuid())\n"
        );
        let ran = s.run("python", &source);
        expect_verdict(&ran, &[Verdict::Ok])?;
        let text = ran.stdout_text();
        ensure(!text.contains(TOKEN), || format!("the token leaked: {text}"))?;
        ensure(!text.contains("READ /etc/shadow"), || format!("shadow was read: {text}"))?;
        ensure(!text.contains("READ /etc/passwd"), || format!("passwd was read: {text}"))?;
        ensure(!text.contains(".pyenv', '.") && !text.contains("bash_history'"), || {
            format!("the home directory is visible: {text}")
        })?;
        // Only stdin, stdout, stderr and the descriptor listing the directory itself.
        ensure(text.contains("fds ['0', '1', '2', '3']"), || {
            format!("the program inherited descriptors: {text}")
        })?;
        ensure(!text.contains("uid 0 ") && !text.ends_with(" 0\n"), || {
            format!("the job runs as root: {text}")
        })
    });

    suite.case("reading secrets at compile time", |s| {
        let source = format!(
            "#include \"/etc/shadow\"\n#include \"{}\"\nint main(void) {{ return 0; }}\n",
            s.token_file.display()
        );
        let ran = s.run("c", &source);
        expect_verdict(&ran, &[Verdict::CompileError])?;
        ensure(!ran.diagnostics.contains(TOKEN), || {
            format!("the compiler showed the token: {}", ran.diagnostics)
        })?;
        ensure(ran.diagnostics.contains("No such file"), || {
            format!(
                "the files should not exist for the compiler: {}",
                ran.diagnostics
            )
        })
    });

    suite.case("writing outside the job directory", |s| {
        let marker = format!("kiln-hostile-{}", std::process::id());
        let jobs_root = s.jobs_root.display().to_string();
        let source = format!(
            "import os\n\
             for d in ('/usr', '/etc', '/', '/root', {jobs_root:?}, '/dev/shm', '/tmp', '/var/tmp'):\n    \
                 try:\n        \
                     open(os.path.join(d, {marker:?}), 'w').write('x')\n        \
                     print('WROTE', d)\n    \
                 except OSError as e:\n        \
                     print('denied', d, e.strerror)\n"
        );
        let ran = s.run("python", &source);
        expect_verdict(&ran, &[Verdict::Ok])?;
        let text = ran.stdout_text();
        // The private /tmp and /dev/shm may be written: bounded tmpfs that vanish with the job
        // (the jobs root seen inside is only a directory of that private /tmp).
        let wrote: Vec<&str> = text.lines().filter(|l| l.starts_with("WROTE")).collect();
        let private = |line: &&str| {
            let dir = line.trim_start_matches("WROTE ");
            dir == "/dev/shm" || dir == "/tmp" || dir.starts_with("/tmp/")
        };
        ensure(wrote.iter().all(private), || {
            format!("wrote outside the job directory: {text}")
        })?;
        for dir in ["/usr", "/etc", "/", "/root", "/tmp", "/var/tmp", "/dev/shm", &jobs_root] {
            let path = Path::new(dir).join(&marker);
            ensure(!path.exists(), || format!("{} appeared on the host", path.display()))?;
        }
        Ok(())
    });

    suite.case(
        "making a user namespace to get new mounts and networks",
        |s| {
            let source = "import ctypes, os\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             r = libc.unshare(0x10000000)  # CLONE_NEWUSER\n\
             print('unshare', r, os.strerror(ctypes.get_errno()) if r else 'ok')\n";
            let ran = s.run("python", source);
            expect_verdict(&ran, &[Verdict::Ok])?;
            let text = ran.stdout_text();
            if !sandbox_has(
                s.disables_userns,
                "a way to forbid user namespaces (bubblewrap 0.8+)",
                &text,
            )? {
                return Ok(());
            }
            ensure(text.starts_with("unshare -1"), || {
                format!("the job made a user namespace: {text:?}")
            })
        },
    );

    suite.case("kernel interfaces: keyrings, BPF, perf, userfaultfd, io_uring", |s| {
        // syscall numbers for x86_64 and aarch64, chosen by the interpreter's machine.
        let source = "import ctypes, os, platform\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             nrs = {'x86_64': dict(keyctl=250, bpf=321, perf_event_open=298, userfaultfd=323, io_uring_setup=425),\n\
                    'aarch64': dict(keyctl=219, bpf=280, perf_event_open=241, userfaultfd=282, io_uring_setup=425)}[platform.machine()]\n\
             buf = ctypes.create_string_buffer(256)\n\
             for name, nr in nrs.items():\n    \
                 r = libc.syscall(nr, 0, buf, 0, 0, 0)\n    \
                 print(name, r, os.strerror(ctypes.get_errno()) if r < 0 else 'ALLOWED')\n\
             print([l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0].strip())\n";
        let ran = s.run("python", source);
        expect_verdict(&ran, &[Verdict::Ok])?;
        let text = ran.stdout_text();
        if !sandbox_has(s.filters_syscalls, "its seccomp filter", &text)? {
            return Ok(());
        }
        ensure(text.contains("Seccomp:\t2") || text.contains("Seccomp: 2"), || {
            format!("the job is not under a seccomp filter: {text:?}")
        })?;
        let refused = text
            .lines()
            .filter(|line| line.ends_with("Operation not permitted"))
            .count();
        ensure(refused == 5 && !text.contains("ALLOWED"), || {
            format!("a kernel interface was reachable: {text:?}")
        })
    });

    suite.case("kill -9 -1", |s| {
        let ran = s.run(
            "c",
            "#include <signal.h>\n#include <stdio.h>\n\
             int main(void) { printf(\"killing\\n\"); fflush(stdout); kill(-1, SIGKILL); return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::Ok, Verdict::Signal])
    });

    suite.case("killing the server's pid", |s| {
        let source = format!(
            "#include <signal.h>\n#include <stdio.h>\n#include <errno.h>\n#include <string.h>\n\
             int main(void) {{ int r = kill({pid}, SIGKILL); printf(\"kill: %d %s\\n\", r, r ? strerror(errno) : \"ok\"); \
             r = kill({pid}, SIGTERM); return 0; }}\n",
            pid = s.server_pid
        );
        let ran = s.run("c", &source);
        expect_verdict(&ran, &[Verdict::Ok, Verdict::Signal])
    });

    suite.case("a setsid + sleep child outlives the program", |s| {
        let ran = s.run(
            "c",
            "#include <unistd.h>\n#include <stdio.h>\n\
             int main(void) { if (fork() == 0) { setsid(); execl(\"/bin/sleep\", \"sleep\", \"4242.5\", (char *)0); _exit(1); }\n\
               printf(\"parent done\\n\"); return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::Ok])?;
        let gone = wait_until(Duration::from_secs(3), || {
            !std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|entry| {
                        std::fs::read(entry.path().join("cmdline"))
                            .is_ok_and(|c| c.windows(6).any(|w| w == b"4242.5"))
                    })
        });
        ensure(gone, || "the setsid + sleep child is still alive after the job".into())
    });

    suite.case("closing stdout early", |s| {
        let ran = s.run(
            "c",
            "#include <unistd.h>\n\
             int main(void) { close(1); usleep(100000); for (int i = 0; i < 1000; i++) write(1, \"x\", 1); write(2, \"still here\\n\", 11); return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::Ok])?;
        ensure(ran.stderr == b"still here\n", || format!("stderr {:?}", ran.stderr))
    });

    suite.case("reading stdin forever with none given", |s| {
        let started = Instant::now();
        let ran = s.run(
            "python",
            "import sys\ntotal = 0\nwhile True:\n    data = sys.stdin.buffer.read(4096)\n    if not data:\n        break\n    total += len(data)\nprint('eof after', total)\n",
        );
        expect_verdict(&ran, &[Verdict::Ok])?;
        ensure(ran.stdout_text() == "eof after 0\n", || ran.stdout_text())?;
        ensure(started.elapsed() < Duration::from_secs(2), || {
            "reading an empty stdin should end at once".into()
        })
    });

    suite.case("printing invalid UTF-8", |s| {
        let ran = s.run(
            "c",
            "#include <unistd.h>\nint main(void) { write(1, \"\\xff\\xfe\\x80ok\\n\", 6); return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::Ok])?;
        ensure(ran.stdout == b"\xff\xfe\x80ok\n", || {
            format!("bytes changed: {:?}", ran.stdout)
        })
    });

    suite.case("a segfault", |s| {
        let ran = s.run(
            "c",
            "int main(void) { *(volatile int *)0 = 1; return 0; }\n",
        );
        expect_verdict(&ran, &[Verdict::Signal])?;
        ensure(ran.result.signal().as_deref() == Some("SIGSEGV"), || {
            format!("signal {:?}", ran.result.signal())
        })
    });

    suite.case("a C++ compile that never ends", |s| {
        // 2^40 distinct instantiations: no compiler memoizes its way out of that.
        let ran = s.run(
            "cpp",
            "template <int N, long M> struct Bomb {\n\
               static constexpr long value = Bomb<N - 1, 2 * M>::value + Bomb<N - 1, 2 * M + 1>::value;\n\
             };\n\
             template <long M> struct Bomb<0, M> { static constexpr long value = M; };\n\
             constexpr long total = Bomb<40, 0>::value;\n\
             int main() { return total == 0; }\n",
        );
        // Whichever compile limit comes first, time or memory, stops it.
        expect_verdict(&ran, &[Verdict::TimeLimit, Verdict::MemoryLimit])?;
        ensure(
            ran.field("message").is_some_and(|m| m.contains("compil")),
            || format!("message {:?}", ran.field("message")),
        )
    });

    suite.case("a Rust compile that never ends", |s| {
        let ran = s.run(
            "rust",
            "#![allow(long_running_const_eval)]\n\
             const SPIN: u64 = { let mut i: u64 = 0; loop { i = i.wrapping_add(1); if i == 0 { break i; } } };\n\
             fn main() { println!(\"{}\", SPIN); }\n",
        );
        expect_verdict(&ran, &[Verdict::TimeLimit])?;
        ensure(
            ran.field("message").is_some_and(|m| m.contains("compile-time limit")),
            || format!("message {:?}", ran.field("message")),
        )
    });

    suite.case("the client goes away mid-run", |s| {
        let stats = &s.handle.as_ref().expect("server").stats().cancelled;
        let cancelled_before = stats.load(std::sync::atomic::Ordering::Relaxed);
        let mut job = JobSpec::code(
            Intent::Run,
            "python",
            "import os, time\nos.fork()\nwhile True:\n    time.sleep(0.01)\n"
                .as_bytes()
                .to_vec(),
        );
        job.head.time_limit_ms = Some(2000);
        let response = s.client.start(&job).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
        drop(response);
        let noticed = wait_until(Duration::from_millis(1500), || {
            stats.load(std::sync::atomic::Ordering::Relaxed) > cancelled_before
        });
        ensure(noticed, || {
            "the server did not cancel the job within 1.5 s".into()
        })
    });

    let handle = suite.handle.take().expect("server");
    handle.shutdown(Duration::from_secs(2));
    let leftovers_gone = wait_until(Duration::from_secs(5), || {
        job_processes(&jobs_root).is_empty()
    });
    if !leftovers_gone {
        suite.failures.push(format!(
            "processes left after the suite: {:?}",
            job_processes(&jobs_root)
        ));
    }
    let left_dirs: Vec<_> = std::fs::read_dir(&jobs_root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !left_dirs.is_empty() {
        suite
            .failures
            .push(format!("job directories left: {left_dirs:?}"));
    }
    drop(suite.client);
    drop(secrets);
    drop(cache);
    let fds_after = open_fds();
    if fds_after > fds_before {
        suite.failures.push(format!(
            "file descriptors leaked: {fds_before} before the suite, {fds_after} after"
        ));
    }
    assert!(
        suite.failures.is_empty(),
        "hostile cases failed:\n{}",
        suite.failures.join("\n")
    );
}
