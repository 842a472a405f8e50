"""Confinement of an executor, the process that runs a submission's code, applied in it
before the learner's module loads (a fork of the zygote, or `python -m kata.executor`).

For class grading (kata.grade, Gradescope) the kernel enforces it, so native code (ctypes,
an extension module) is held as well as Python:

- **no network**: a network namespace of its own (unshare(CLONE_NEWNET), in a user
  namespace where we are not root), with no interface but a loopback that is down; the
  zygote listens on an abstract socket, which lives in the old namespace and so is out of
  reach; Landlock refuses TCP bind and connect too where the kernel has it (ABI 4);
- **files**: Landlock (Linux 5.13+) allows reading only the Python installation, the
  suite's own code (kata/, graders/, solutions/), the student's own submission and system
  libraries, and writing only its scratch folders: other students' files, the hidden
  graders and the gradebook cannot be opened. Signals to processes outside (ABI 6) are
  refused;
- **processes**: a seccomp filter refuses fork, vfork, execve and every clone that is not
  a thread (clone3 answers ENOSYS, so the C library falls back to clone, whose flags the
  filter can read), ptrace and reading or writing other processes' memory, and new
  namespaces: nothing it starts can outlive it, because it can start nothing. A topic may
  allow worker processes (`processes: True`): forks are then allowed, still confined by
  the same Landlock domain and namespace, and ended with the executor's process group;
- time and memory: RLIMIT_AS here, per-check and per-student time limits in the judge.

On top, a Python audit hook refuses writes and new processes with a readable message.
Where the kernel lacks a mechanism (macOS, no Landlock, user namespaces disabled),
`probe()` says which, `kata grade` prints it in one line and falls back to the audit hook
and limits alone, and `--require-sandbox` refuses to grade instead.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import struct
import sys

OPTIONS_ENV = "KATA_SANDBOX"


class SandboxUnavailable(OSError):
    """The kernel cannot confine the executor as asked."""


def options_from_env() -> dict:
    """The confinement a grading asks for, set by kata.grade in the judge's environment."""
    try:
        return json.loads(os.environ.get(OPTIONS_ENV, "") or "{}")
    except ValueError:
        return {}


def enter(options: dict) -> None:
    """Apply `options` to this process: cwd, env, limits, then (with `confine`) the kernel's
    confinement, then the audit hook. Raises SandboxUnavailable if `confine` is asked for
    and cannot be had: a submission then never runs unconfined by accident."""
    if options.get("cwd"):
        os.chdir(options["cwd"])
    for name, value in (options.get("env") or {}).items():
        os.environ[name] = value
    memory_mb = options.get("memory_mb")
    if memory_mb:
        limit = int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    confine = options.get("confine")
    if confine:
        confine_kernel(read=confine.get("read", []), write=confine.get("write", []), processes=bool(confine.get("processes")))
    if options.get("writable") is not None:
        # A topic's permission to start worker processes holds with or without the kernel's confinement.
        guard_writes(options["writable"], processes=bool(options.get("processes") or (confine or {}).get("processes")))


def guard_writes(writable: list[str], *, processes: bool = False) -> None:
    """Refuse, through an audit hook (PEP 578, which Python code cannot remove), every file
    opened for writing outside the `writable` folders and /dev, and every new process.
    Native code (ctypes, an extension) is not seen by it: the kernel's confinement is."""
    roots = [os.path.realpath(w) for w in writable]
    allowed = tuple(r + os.sep for r in roots) + ("/dev/",)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    starts = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork")

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            _, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & write_flags)
            path = os.path.realpath(os.fsdecode(args[0]))
            if writing and path not in roots and not path.startswith(allowed):  # a folder itself: O_TMPFILE
                raise PermissionError(f"grading forbids writing files: {os.fsdecode(args[0])}")
        elif event in starts and not processes:
            raise PermissionError("grading forbids starting processes")

    sys.addaudithook(hook)


# ---------------------------------------------------------------- the kernel's confinement

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxUnavailable(err, f"{what}: {os.strerror(err)}")
    return result


def confine_kernel(*, read: list[str], write: list[str], processes: bool = False) -> None:
    """No network, Landlock's file rules, the seccomp process filter; in that order (the
    filter refuses the unshare the first step needs)."""
    if _libc is None:
        raise SandboxUnavailable(errno.ENOSYS, f"no kernel confinement on {sys.platform}")
    isolate_network()
    if processes and os.path.isdir("/dev/shm"):
        private_shm()
        write = [*write, "/dev/shm"]
    landlock(read=read, write=write)
    seccomp_filter(processes=processes)


CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 0x4000, 1 << 18


def private_shm() -> None:
    """A /dev/shm of its own, for a topic whose code starts worker processes (a DataLoader's
    queues keep their semaphores there): a tmpfs in a mount namespace of its own, after
    isolate_network (whose user namespace, where we are not root, allows the mount). The
    shared /dev/shm would be a channel between students graded side by side, and what a
    submission left there would outlive it; this one ends with the executor."""
    _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, b"size=256m,mode=1777"), "mount tmpfs on /dev/shm")


def isolate_network() -> None:
    """A network namespace with nothing in it; as a non-root user, inside a user namespace
    that maps us to ourselves (only a single-threaded process may enter one: an executor
    forked from the zygote is)."""
    if _libc.unshare(CLONE_NEWNET) == 0:
        return
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER | CLONE_NEWNET)")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


# Landlock (include/uapi/linux/landlock.h)
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none (or it is disabled)."""
    if _libc is None:
        return 0
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def landlock(*, read: list[str], write: list[str]) -> None:
    abi = landlock_abi()
    if abi < 1:
        raise SandboxUnavailable(errno.ENOSYS, "Landlock is not available in this kernel")
    fs_all = (1 << 13) - 1  # ABI 1: execute ... make_sym
    if abi >= 2:
        fs_all |= 1 << 13  # refer
    if abi >= 3:
        fs_all |= FS_TRUNCATE
    if abi >= 5:
        fs_all |= FS_IOCTL_DEV
    attr = _RulesetAttr(fs_all, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        reading = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
        devices = reading | FS_WRITE_FILE | (FS_IOCTL_DEV if abi >= 5 else 0)  # /dev/null, a GPU's nodes
        rules = [(p, reading) for p in read] + [(p, fs_all) for p in write] + [("/dev", devices)]
        for path, access in rules:
            _allow(ruleset, path, access & fs_all)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _allow(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this machine does not have
    try:
        if not os.path.isdir(path):  # a file takes file rights only
            access &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
        rule = _PathBeneath(access, fd)
        _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule({path})")
    finally:
        os.close(fd)


# seccomp: a classic BPF program over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}
ARCHES = {
    # machine: (AUDIT_ARCH, syscalls refused with EPERM, clone, clone3, x32 bit)
    "x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "ptrace": 101, "mount": 165,
                            "umount2": 166, "unshare": 272, "setns": 308, "process_vm_readv": 310,
                            "process_vm_writev": 311, "bpf": 321, "userfaultfd": 323, "perf_event_open": 298,
                            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "pidfd_getfd": 438},
               56, 435, 0x40000000),
    "aarch64": (0xC00000B7, {"execve": 221, "execveat": 281, "ptrace": 117, "mount": 40, "umount2": 39, "unshare": 97,
                             "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280,
                             "userfaultfd": 282, "perf_event_open": 241, "io_uring_setup": 425, "io_uring_enter": 426,
                             "io_uring_register": 427, "pidfd_getfd": 438},
                220, 435, 0),
}  # fmt: skip
PROCESS_CALLS = ("fork", "vfork", "execve", "execveat")
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000


def _ret_errno(err: int) -> int:
    return 0x00050000 | err


def seccomp_program(machine: str, *, processes: bool = False) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions."""
    if machine not in ARCHES:
        raise SandboxUnavailable(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, refused, clone, clone3, x32 = ARCHES[machine]
    refused = {name: nr for name, nr in refused.items() if not (processes and name in PROCESS_CALLS)}
    LD, JEQ, JSET, JGE, RET = 0x20, 0x15, 0x45, 0x35, 0x06
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, RET_KILL_PROCESS), (LD, 0, 0, 0)]  # another ABI: killed
    if x32:
        prog += [(JGE, 0, 1, x32), (RET, 0, 0, _ret_errno(errno.EPERM))]
    for nr in sorted(set(refused.values())):
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, _ret_errno(errno.EPERM))]
    prog += [(JEQ, 0, 1, clone3), (RET, 0, 0, _ret_errno(errno.ENOSYS))]  # the C library falls back to clone
    if not processes:
        # clone: a thread (CLONE_THREAD in its flags, args[0]) is allowed, a process is not.
        prog += [(JEQ, 0, 4, clone), (LD, 0, 0, 16), (JSET, 1, 0, CLONE_THREAD), (RET, 0, 0, _ret_errno(errno.EPERM)), (RET, 0, 0, RET_ALLOW)]
    prog += [(RET, 0, 0, RET_ALLOW)]
    return prog


def seccomp_filter(*, processes: bool = False) -> None:
    prog = seccomp_program(platform.machine(), processes=processes)
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buffer = ctypes.create_string_buffer(raw)

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog), ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


# ---------------------------------------------------------------- what this machine can do


def probe() -> str | None:
    """None if this machine can confine an executor fully, else why not, in one line.
    Tried in a throwaway fork, so this process stays as it was."""
    if _libc is None or not hasattr(os, "fork"):
        return f"the kernel's confinement (namespaces, Landlock, seccomp) is Linux-only; this is {sys.platform}"
    if platform.machine() not in ARCHES:
        return f"no seccomp filter for {platform.machine()}"
    if landlock_abi() < 1:
        return "this kernel has no Landlock (Linux 5.13+, with landlock among the LSMs)"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            confine_kernel(read=[sys.prefix], write=[], processes=False)
            message = b"ok"
        except BaseException as exc:  # noqa: BLE001
            message = str(exc).encode()[:500]
        os.write(write, message)
        os._exit(0)
    os.close(write)
    answer = b""
    while chunk := os.read(read, 4096):
        answer += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return None if answer == b"ok" else f"the executor cannot be confined here ({answer.decode(errors='replace')})"
