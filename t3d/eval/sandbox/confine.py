"""Confinement of one sandboxed process: namespaces, a fresh read-only root, an unprivileged uid, rlimits.

Runs in the launcher (a bare `python -I -S`, builtin modules and ctypes only), before any untrusted code.
`enter_sandbox` returns in the process that will run the untrusted code; on any failure it writes one line
to stderr (which the evaluator logs) and exits with SETUP_FAILED, before anything untrusted has run.
"""
import os
import resource
import sys

SETUP_FAILED = 121
UID_BASE = 1_500_000_000  # + the launcher's pid: the host uid sandboxed code runs as when the evaluator is root

_SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126}, "aarch64": {"pivot_root": 41, "capset": 91}}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_KEPT_MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048 | 4096  # noatime, nodiratime, relatime
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38


def load_libc():
    """(ctypes, libc, check): libc through ctypes, loaded once before the launcher forks."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, *what):
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{os.strerror(errno)}: {' '.join(map(str, what))}")

    return ctypes, libc, check


def _die_with_parent(libc):
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # cleared by credential changes: set again after each


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_namespaces(job, libc, check):
    """New mount, PID, network, IPC and UTS namespaces; sets job["uid"], the uid the code will run as.

    As root: the code runs as a host uid of its own, UID_BASE + this launcher's pid (unique among live
    sandboxes), because the kernel does not enforce RLIMIT_NPROC for root, also not through a user
    namespace mapped to root. As a normal user: a new user namespace mapping just that user, which gives
    the capabilities to build the root and makes RLIMIT_NPROC count this namespace's processes only."""
    namespaces = 0x00020000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000  # mount pid net ipc uts
    user_id, group_id = os.geteuid(), os.getegid()
    if user_id == 0:
        check(libc.unshare(namespaces), "unshare(mount, pid, net, ipc, uts)")
        job["uid"] = UID_BASE + os.getpid()
        return
    check(libc.unshare(0x10000000 | namespaces), "unshare(user, mount, pid, net, ipc, uts)")
    _die_with_parent(libc)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{user_id} {user_id} 1\n")
    _write("/proc/self/gid_map", f"{group_id} {group_id} 1\n")
    job["uid"] = user_id


def _mount(check, libc, source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), "mount", source, target)


def _bind(check, libc, source, target, writable=False):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(check, libc, source, target, None, MS_BIND | MS_REC)
    # A remount must keep the source's locked flags (nodev, noexec...), or the kernel refuses it.
    flags = (os.statvfs(target).f_flag & _KEPT_MOUNT_FLAGS) | MS_NOSUID
    if not writable:
        flags |= MS_RDONLY
    _mount(check, libc, None, target, None, MS_BIND | MS_REMOUNT | flags)


def _build_root(job, libc, check):
    """In the new mount + PID namespace: a fresh tmpfs root with read-only binds of job["visible"]."""
    calls = _SYSCALLS[os.uname().machine]
    _mount(check, libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(check, libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")  # only in this namespace
    os.chdir("/tmp")
    os.mkdir("newroot")
    os.mkdir("oldroot")
    check(libc.syscall(calls["pivot_root"], b".", b"oldroot"), "pivot_root")
    os.chdir("/")
    _mount(check, libc, "tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    # The private scratch first, also shown at /tmp, so that read-only binds of a Python living under the
    # host's /tmp (a checkout in /tmp) land inside it rather than in place of it.
    scratch = "/newroot" + job["workdir"]
    os.makedirs(scratch)
    _mount(check, libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={job['scratch_mb']}m,mode=0700,uid={job['uid']},gid={job['uid']}")
    if job["workdir"] != "/tmp":
        _bind(check, libc, scratch, "/newroot/tmp", writable=True)
    for path in job["visible"]:
        source, target = "/oldroot" + path, "/newroot" + path
        if os.path.islink(source):  # e.g. /bin -> usr/bin on merged-/usr systems
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(source), target)
        elif os.path.exists(source):
            _bind(check, libc, source, target)
    for node in ("null", "zero", "full", "random", "urandom"):
        _bind(check, libc, "/oldroot/dev/" + node, "/newroot/dev/" + node, writable=True)
    os.symlink("/proc/self/fd", "/newroot/dev/fd")
    os.makedirs("/newroot/proc")
    try:  # a /proc of this PID namespace only; needs the host's /proc still visible, so before the pivot
        _mount(check, libc, "proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # e.g. a container that masks parts of /proc: the code runs without /proc
    check(libc.umount2(b"/oldroot", 2), "umount /oldroot")
    os.chdir("/newroot")
    check(libc.syscall(calls["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", 2), "umount old root")
    os.chdir("/")
    _mount(check, libc, None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges(job, ctypes, libc, check):
    if os.geteuid() == 0:  # the evaluator is root: become the sandbox's own unprivileged uid
        os.setgroups([])
        os.setresgid(job["uid"], job["uid"], job["uid"])
        os.setresuid(job["uid"], job["uid"], job["uid"])
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    check(libc.syscall(_SYSCALLS[os.uname().machine]["capset"], header, (ctypes.c_uint32 * 6)()), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _status_code(status):
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def enter_sandbox(job, native=None):
    """Trusted set-up; returns in the sandboxed process (with namespaces: a child of a PID-namespace init,
    as the code's uid, without capabilities), its rlimits set. `job`: the limits and paths of the job
    (the launcher's first message); `native`: load_libc(), if already loaded."""
    try:
        if job["isolate"]:
            ctypes, libc, check = native or load_libc()
            _die_with_parent(libc)
            _enter_namespaces(job, libc, check)
            init = os.fork()
            if init:  # this launcher: mirror the init's status (which is the payload's)
                os._exit(_status_code(os.waitpid(init, 0)[1]))
            _die_with_parent(libc)
            # Not dumpable: the payload (a process without capabilities, in a user namespace the same
            # user as this init when the evaluator is not root) cannot ptrace it or read its /proc memory,
            # environment or descriptors.
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            _build_root(job, libc, check)
            payload = os.fork()
            if payload:  # PID 1: reap orphans until the payload ends; our exit kills the rest
                while True:
                    pid, status = os.wait()
                    if pid == payload:
                        os._exit(_status_code(status))
            _drop_privileges(job, ctypes, libc, check)
            _die_with_parent(libc)
            os.setsid()  # its process group is then inside the namespace: killpg(0) reaches nothing outside
        elif sys.platform == "linux":
            _die_with_parent((native or load_libc())[1])
        os.chdir(job["workdir"])
        if job["isolate"]:  # outside a user namespace it would count every process of the user
            resource.setrlimit(resource.RLIMIT_NPROC, (job["max_processes"], job["max_processes"]))
        resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_seconds"], job["cpu_seconds"] + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_bytes"], job["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sys.path.extend(job["site_packages"])
    except BaseException as err:  # the evaluator logs this line; nothing of the payload has run
        os.write(2, f"sandbox set-up failed: {type(err).__name__}: {err}\n".encode())
        os._exit(SETUP_FAILED)


def only_fds(*keep):
    """Close every descriptor but `keep`; stdio not kept becomes /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(null, fd)
    low = 3
    for fd in sorted(set(keep) | {os.sysconf("SC_OPEN_MAX")}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
