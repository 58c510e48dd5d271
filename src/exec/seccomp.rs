//! The seccomp filter of sandboxed jobs, handed to `bwrap --seccomp`: a short classic-BPF program
//! that refuses (EPERM) the system calls a program written for a course never needs and that
//! widen the kernel's attack surface: kernel keyrings, BPF, perf events, userfaultfd, io_uring,
//! mounting, module and kexec loading, swap, reboot, file handles. Everything else is allowed, so
//! compilers, runtimes and sanitizers work as usual. On x86_64 the x32 system-call numbers are
//! refused as a whole (they would otherwise reach the same calls under other numbers), and a call
//! from another architecture's ABI kills the process.
//!
//! The program is written by hand (a dozen instructions per architecture and one pair per call)
//! rather than through libseccomp, so there is no C library to build against.

use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;

// Classic BPF opcodes (linux/filter.h) and seccomp constants (linux/seccomp.h, linux/audit.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_003e);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_00b7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// x86_64's x32 ABI marks its system-call numbers with this bit.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: Option<u32> = Some(0x4000_0000);
#[cfg(not(target_arch = "x86_64"))]
const X32_SYSCALL_BIT: Option<u32> = None;

/// The refused system calls, by name (for the docs and tests) and number.
pub fn refused() -> Vec<(&'static str, libc::c_long)> {
    let mut calls = vec![
        ("add_key", libc::SYS_add_key),
        ("keyctl", libc::SYS_keyctl),
        ("request_key", libc::SYS_request_key),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("reboot", libc::SYS_reboot),
        ("syslog", libc::SYS_syslog),
        ("acct", libc::SYS_acct),
        ("quotactl", libc::SYS_quotactl),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("vhangup", libc::SYS_vhangup),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        ("uselib", libc::SYS_uselib),
        ("modify_ldt", libc::SYS_modify_ldt),
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
    ]);
    calls
}

/// One classic-BPF instruction (`struct sock_filter`), 8 bytes in native byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Instruction {
    code: u16,
    jump_true: u8,
    jump_false: u8,
    k: u32,
}

impl Instruction {
    fn statement(code: u16, k: u32) -> Instruction {
        Instruction {
            code,
            jump_true: 0,
            jump_false: 0,
            k,
        }
    }

    fn jump(code: u16, k: u32, jump_true: u8, jump_false: u8) -> Instruction {
        Instruction {
            code,
            jump_true,
            jump_false,
            k,
        }
    }

    fn bytes(self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0..2].copy_from_slice(&self.code.to_ne_bytes());
        bytes[2] = self.jump_true;
        bytes[3] = self.jump_false;
        bytes[4..8].copy_from_slice(&self.k.to_ne_bytes());
        bytes
    }
}

fn instructions(arch: u32) -> Vec<Instruction> {
    let refuse = Instruction::statement(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32);
    let mut program = vec![
        Instruction::statement(BPF_LD_W_ABS, OFFSET_ARCH),
        Instruction::jump(BPF_JMP_JEQ_K, arch, 1, 0),
        Instruction::statement(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        Instruction::statement(BPF_LD_W_ABS, OFFSET_NR),
    ];
    if let Some(x32) = X32_SYSCALL_BIT {
        program.push(Instruction::jump(BPF_JMP_JGE_K, x32, 0, 1));
        program.push(Instruction::statement(
            BPF_RET_K,
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ));
    }
    for (_, number) in refused() {
        let Ok(number) = u32::try_from(number) else {
            continue;
        };
        program.push(Instruction::jump(BPF_JMP_JEQ_K, number, 0, 1));
        program.push(refuse);
    }
    program.push(Instruction::statement(BPF_RET_K, SECCOMP_RET_ALLOW));
    program
}

/// The filter as `bwrap --seccomp` reads it, or `None` on an architecture it is not written for.
/// Built once; every job's filter file is a copy.
pub fn program() -> Option<&'static [u8]> {
    static PROGRAM: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let arch = AUDIT_ARCH?;
            Some(
                instructions(arch)
                    .into_iter()
                    .flat_map(Instruction::bytes)
                    .collect(),
            )
        })
        .as_deref()
}

/// A close-on-exec memory file holding the filter, positioned at its start, for one bwrap run
/// (bwrap reads it to the end).
///
/// # Errors
/// When there is no filter for this architecture or the file cannot be made.
pub fn program_file() -> io::Result<OwnedFd> {
    let program = program().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "no seccomp filter for this architecture",
        )
    })?;
    // SAFETY: memfd_create with a valid C string; the descriptor is owned from here on.
    let fd = unsafe { libc::memfd_create(c"kiln-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned open and nothing else owns it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(program)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_checks_the_architecture_then_refuses_each_call() {
        let Some(arch) = AUDIT_ARCH else {
            return;
        };
        let program = instructions(arch);
        assert_eq!(
            program[0],
            Instruction::statement(BPF_LD_W_ABS, OFFSET_ARCH)
        );
        assert_eq!(program[1].k, arch);
        assert_eq!(program[2].k, SECCOMP_RET_KILL_PROCESS);
        assert_eq!(
            program.last().map(|i| i.k),
            Some(SECCOMP_RET_ALLOW),
            "anything not listed is allowed"
        );
        for (name, number) in refused() {
            let at = program
                .iter()
                .position(|i| i.code == BPF_JMP_JEQ_K && i64::from(i.k) == number)
                .unwrap_or_else(|| panic!("{name} is not in the program"));
            assert_eq!(
                program[at + 1].k,
                SECCOMP_RET_ERRNO | libc::EPERM as u32,
                "{name} is not refused with EPERM"
            );
        }
        assert_eq!(
            super::program().map(|bytes| bytes.len()),
            Some(program.len() * 8)
        );
    }

    /// Loads the filter in a forked child (the test process stays unfiltered) and checks that a
    /// refused call fails with EPERM while ordinary ones still work.
    #[test]
    fn a_process_under_the_filter_is_refused_only_the_listed_calls() {
        let Some(bytes) = program() else {
            return;
        };
        let filters: Vec<libc::sock_filter> = bytes
            .chunks_exact(8)
            .map(|chunk| libc::sock_filter {
                code: u16::from_ne_bytes([chunk[0], chunk[1]]),
                jt: chunk[2],
                jf: chunk[3],
                k: u32::from_ne_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: u16::try_from(filters.len()).expect("short program"),
            filter: filters.as_ptr().cast_mut(),
        };
        // SAFETY: the child makes only raw system calls on data prepared before the fork and
        // leaves with _exit; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = (|| {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return 10;
                    }
                    if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog) != 0 {
                        return 11;
                    }
                    // A refused call: keyctl(KEYCTL_GET_KEYRING_ID, session keyring, 0).
                    let refused = libc::syscall(libc::SYS_keyctl, 0, -3, 0);
                    if refused != -1 || *libc::__errno_location() != libc::EPERM {
                        return 12;
                    }
                    let uring =
                        libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null_mut::<u8>());
                    if uring != -1 || *libc::__errno_location() != libc::EPERM {
                        return 13;
                    }
                    // Ordinary calls still work.
                    if libc::getpid() <= 0 {
                        return 14;
                    }
                    let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    if fd < 0 {
                        return 15;
                    }
                    libc::close(fd);
                    0
                })();
                libc::_exit(code);
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
            assert_eq!(
                libc::WEXITSTATUS(status),
                0,
                "10/11: could not load the filter; 12: keyctl allowed; 13: io_uring allowed; 14/15: ordinary calls refused"
            );
        }
    }

    #[test]
    fn the_program_file_holds_the_program_from_its_start() {
        let Some(expected) = program() else {
            return;
        };
        let fd = program_file().expect("memfd");
        let mut file = std::fs::File::from(fd);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut read).expect("reads");
        assert_eq!(read, expected);
    }
}
