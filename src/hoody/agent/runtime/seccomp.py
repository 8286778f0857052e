"""The tenant's seccomp filter: an allowlist whose default answer is EPERM.

Anchored on Docker's default profile (moby's profiles/seccomp/default.json, as it
applies to a container without CAP_SYS_ADMIN), regrouped here by purpose, and
stricter where a tenant needs less: keyrings, io_uring, kcmp, modify_ldt, clock
adjustment and the NUMA memory-policy calls stay out, and no namespace flag passes
clone or unshare (a nested user namespace hands the tenant a full capability set over
fresh namespaces: the door to most container escapes). `DENIED_SYSCALLS` names the
calls that must never be allowed; a unit test keeps the two lists apart. Anything
named in neither is refused as well.

New syscalls: a name the host's libseccomp does not know is skipped by the runtime,
and runc answers ENOSYS (not EPERM) for syscall numbers above the highest one the
profile names, so a libc probing a syscall newer than this list falls back as it would
on an older kernel. A call below that line and not listed gets EPERM, which a program
may take as a real refusal: look at it, then add it here.
"""

from __future__ import annotations

import platform
from typing import Any

__all__ = ["ALLOWED_SYSCALLS", "DENIED_SYSCALLS", "seccomp_profile"]

_ALLOWED_BY_PURPOSE = {
    "processes, threads and signals (clone, unshare: see seccomp_profile)": """
        execve execveat exit exit_group fork vfork wait4 waitid waitpid
        set_tid_address set_robust_list get_robust_list rseq arch_prctl
        set_thread_area get_thread_area prctl seccomp capget capset
        getpid getppid gettid getpgid setpgid getpgrp getsid setsid
        ptrace process_vm_readv process_vm_writev process_mrelease
        pidfd_open pidfd_send_signal kill tkill tgkill
        rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend
        rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo
        sigaltstack sigreturn sigprocmask signalfd signalfd4 pause restart_syscall alarm
    """,
    "credentials and limits, inside the tenant's own user namespace": """
        getuid geteuid getgid getegid getresuid getresgid getgroups
        getuid32 geteuid32 getgid32 getegid32 getresuid32 getresgid32 getgroups32
        setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid setgroups
        setuid32 setgid32 setreuid32 setregid32 setresuid32 setresgid32 setfsuid32
        setfsgid32 setgroups32
        getrlimit setrlimit prlimit64 ugetrlimit getrusage times
        getpriority setpriority ioprio_get ioprio_set umask
    """,
    "scheduling (a real-time class needs CAP_SYS_NICE, which no tenant holds)": """
        sched_yield sched_getaffinity sched_setaffinity sched_getattr sched_setattr
        sched_getparam sched_setparam sched_getscheduler sched_setscheduler
        sched_get_priority_max sched_get_priority_min sched_rr_get_interval
        sched_rr_get_interval_time64 getcpu
    """,
    "memory": """
        brk mmap mmap2 munmap mremap mprotect madvise mincore msync
        mlock mlock2 mlockall munlock munlockall membarrier memfd_create memfd_secret
        remap_file_pages pkey_alloc pkey_free pkey_mprotect map_shadow_stack mseal
    """,
    "clocks and timers, read and wait only (setting the clock is refused)": """
        clock_gettime clock_gettime64 clock_getres clock_getres_time64
        clock_nanosleep clock_nanosleep_time64 nanosleep gettimeofday time
        getitimer setitimer timer_create timer_delete timer_getoverrun
        timer_gettime timer_gettime64 timer_settime timer_settime64
        timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    """,
    "file descriptors and file I/O": """
        open openat openat2 creat close close_range dup dup2 dup3
        read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2
        lseek _llseek sendfile sendfile64 splice tee vmsplice copy_file_range
        fcntl fcntl64 flock ioctl fsync fdatasync sync syncfs sync_file_range
        fadvise64 fadvise64_64 readahead fallocate truncate truncate64
        ftruncate ftruncate64 cachestat
    """,
    "file metadata and directories": """
        stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx
        statfs statfs64 fstatfs fstatfs64 access faccessat faccessat2
        chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat
        chown32 fchown32 lchown32 utime utimes utimensat utimensat_time64 futimesat
        getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr
        listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr
        getcwd chdir fchdir chroot getdents getdents64 mkdir mkdirat rmdir
        rename renameat renameat2 link linkat unlink unlinkat symlink symlinkat
        readlink readlinkat mknod mknodat name_to_handle_at
    """,
    "waiting on many things at once": """
        select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
        epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2
        epoll_ctl_old epoll_wait_old eventfd eventfd2 pipe pipe2
        inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
        futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue
    """,
    "Linux AIO (libaio: databases)": """
        io_setup io_destroy io_submit io_cancel io_getevents
        io_pgetevents io_pgetevents_time64
    """,
    "sockets (socket itself: see seccomp_profile)": """
        socketpair bind listen accept accept4 connect shutdown getsockname getpeername
        getsockopt setsockopt send sendto sendmsg sendmmsg recv recvfrom recvmsg
        recvmmsg recvmmsg_time64 socketcall
    """,
    "System V and POSIX IPC, private to the tenant's ipc namespace": """
        ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64
        semctl shmget shmat shmdt shmctl mq_open mq_unlink mq_timedsend
        mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64 mq_notify
        mq_getsetattr
    """,
    "the machine as the tenant sees it, and unprivileged self-sandboxing": """
        uname sysinfo getrandom
        landlock_create_ruleset landlock_add_rule landlock_restrict_self
    """,
}
ALLOWED_SYSCALLS = tuple(n for names in _ALLOWED_BY_PURPOSE.values() for n in names.split())

# Never allowed: kernel attack surface an unprivileged process could otherwise reach
# (bpf, io_uring, userfaultfd, perf, keyrings, the mount API, kcmp, modify_ldt), the
# host's clock, modules, swap and reboot, and calls that make no sense in a tenant.
# Most are refused by the kernel anyway (no CAP_SYS_ADMIN); seccomp answers first.
_DENIED = """
    _sysctl acct add_key adjtimex bpf clock_adjtime clock_adjtime64 clock_settime
    clock_settime64 create_module delete_module fanotify_init finit_module fsconfig
    fsmount fsopen fspick get_kernel_syms get_mempolicy init_module io_uring_enter
    io_uring_register io_uring_setup ioperm iopl kcmp kexec_file_load kexec_load keyctl
    lookup_dcookie mbind modify_ldt mount mount_setattr move_mount nfsservctl
    open_by_handle_at open_tree perf_event_open pidfd_getfd pivot_root process_madvise
    query_module quotactl quotactl_fd reboot request_key set_mempolicy setdomainname
    sethostname setns settimeofday stime swapoff swapon syslog sysfs umount umount2
    uselib userfaultfd ustat vhangup vm86 vm86old
"""
DENIED_SYSCALLS = tuple(_DENIED.split())

_EPERM = 1
_ENOSYS = 38
_AF_VSOCK = 40  # host<->guest sockets: nothing a tenant should reach (as Docker)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET. Without
# CAP_SYS_ADMIN the kernel refuses all but NEWUSER anyway; refusing them all here
# keeps it so should a tenant ever hold that capability in its namespace.
_NAMESPACE_FLAGS = 0x7E020000
_CLONE_NEWTIME = 0x80  # unshare only: in clone's flags these low bits are the exit signal
# personality(2) values that only select or query the Linux ABI (as Docker allows).
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# The one ABI tenants may issue syscalls in: the machine's 64-bit one. Docker also
# lets the 32-bit ABIs (i386 `int 0x80`, x32; arm) through its filter; here they meet
# the filter's bad-architecture action, which kills the calling process (SIGSYS):
# tenants run 64-bit code only, and the compat entry points, a kernel attack surface
# of their own, are closed. It also starts tenants sooner: runc compiles the filter
# once per ABI, and dropping i386 and x32 took 15-20 ms off each `runc run` here.
_SECCOMP_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64"],
    "aarch64": ["SCMP_ARCH_AARCH64"],
}


def _arg(index: int, op: str, value: int, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def seccomp_profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI `linux.seccomp` section: `ALLOWED_SYSCALLS`, a few calls allowed only
    with harmless arguments, EPERM for everything else.

    clone and unshare pass without namespace flags only. clone3 answers ENOSYS: its
    flags live in memory seccomp cannot read, so it cannot be checked, and ENOSYS
    (where EPERM would fail thread creation outright) makes glibc fall back to clone,
    whose flags the rule above checks.
    """
    arch = machine or platform.machine()
    # clone's flags are argument 0 on x86 and arm (argument 1 only on s390).
    masked = "SCMP_CMP_MASKED_EQ"  # (arg & value) == valueTwo
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "architectures": _SECCOMP_ARCHES.get(arch, []),
        "syscalls": [
            {"names": list(ALLOWED_SYSCALLS), "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [_arg(0, masked, _NAMESPACE_FLAGS)],
            },
            {
                "names": ["unshare"],
                "action": "SCMP_ACT_ALLOW",
                "args": [_arg(0, masked, _NAMESPACE_FLAGS | _CLONE_NEWTIME)],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ALLOW",
                "args": [_arg(0, "SCMP_CMP_NE", _AF_VSOCK)],
            },
            *(
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [_arg(0, "SCMP_CMP_EQ", value)],
                }
                for value in _PERSONALITIES
            ),
        ],
    }
