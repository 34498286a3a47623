# thaw's Python template (zygote). Runs as the interpreter of a template process, already
# confined by thaw-sandbox: root of its own user namespace (a shifted host id range), its own
# mount, PID, network, UTS, IPC and cgroup namespaces, switched root, no_new_privs, the template
# seccomp profile. See crates/thaw-sandbox/src/zygote.rs for the design.
#
# Protocol (JSON messages on SOCK_SEQPACKET sockets):
#   control socket (descriptor 3), from the runtime:
#     1. the configuration; answered with {"ok": pid} once preload and handler are imported, or
#        {"error": traceback} before exiting;
#     2. b"fork" with one descriptor, an instance socket: fork an instance on it; b"fork-idle"
#        the same at SCHED_IDLE (a pool refill: it yields the CPU to invocations being served,
#        and the runtime puts the parked instance back to the normal policy).
#   instance socket, per instance:
#     outer process -> runtime  b"ready"      (the runtime reads its host pid from the kernel's
#                                              credentials and moves it into its cgroup)
#     runtime -> outer process  b"go"
#     inner process -> runtime  b"parked"     (PID 1 of a fresh PID namespace, root switched,
#                                              capabilities dropped, seccomp installed)
#     runtime -> inner process  b"run" + stdin, stdout, stderr
#     inner process -> runtime  {"code": n} when the handler is done (before exiting)
#     outer process -> runtime  {"code": n} or {"signal": n} when the inner one has ended
#                               (the runtime takes the first status it gets)
#   any process -> runtime      {"error": text} when a step fails.

import ctypes
import fcntl
import gc
import json
import os
import random
import resource
import signal
import socket
import stat
import struct
import sys
import traceback

CTRL_FD = 3
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x20000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_KEEPCAPS = 8
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 1
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.syscall.restype = ctypes.c_long


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def check(r, what):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    return r


def b(s):
    return None if s is None else s.encode()


def mount(src, dst, fstype, flags, data=None):
    check(libc.mount(b(src), b(dst), b(fstype), flags, b(data)),
          "mount %s on %s (type %s)" % (src, dst, fstype))


def secure_join(root, path):
    """root + path, every symbolic link resolved as if root were / (like rootfs::secure_join)."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved, links = [], 0
    while parts:
        c = parts.pop(0)
        if c == "..":
            if resolved:
                resolved.pop()
            continue
        cand = os.path.join(root, *resolved, c)
        try:
            is_link = stat.S_ISLNK(os.lstat(cand).st_mode)
        except OSError:
            is_link = False
        if not is_link:
            resolved.append(c)
            continue
        links += 1
        if links > 40:
            raise OSError("too many symbolic links resolving %s in the root" % path)
        target = os.readlink(cand)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return os.path.join(root, *resolved)


def mount_point(p, is_dir):
    if is_dir:
        os.makedirs(p, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if not os.path.exists(p):
            open(p, "w").close()


def populate_dev(dev):
    for name in DEVICES:
        p = os.path.join(dev, name)
        open(p, "w").close()
        mount("/dev/" + name, p, None, MS_BIND)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))


def build_root(root, ops):
    """Mounts, masks and read-only paths on the instance's new root, as rootfs::finish_and_pivot."""
    for op in ops:
        kind = op["op"]
        if kind == "mount":
            dst = secure_join(root, op["dst"])
            flags = op["flags"]
            if op["bind"]:
                mount_point(dst, os.path.isdir(op["src"]))
                mount(op["src"], dst, None, MS_BIND | (flags & MS_REC))
                extra = flags & ~(MS_BIND | MS_REC)
                if extra:
                    mount(None, dst, None, MS_BIND | MS_REMOUNT | extra)
            else:
                mount_point(dst, True)
                mount(op["src"], dst, op["type"], flags, op["data"])
            if op["propagation"]:
                mount(None, dst, None, op["propagation"])
            if op["dst"] == "/dev":
                populate_dev(dst)
        elif kind == "mask":
            p = secure_join(root, op["path"])
            if not os.path.exists(p):
                continue
            if os.path.isdir(p):
                mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
            else:
                mount("/dev/null", p, None, MS_BIND)
        elif kind == "readonly":
            p = secure_join(root, op["path"])
            if not os.path.lexists(p):
                continue
            mount(p, p, None, MS_BIND | MS_REC)
            mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "readonly_root":
            mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV)


def loopback_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1] | IFF_UP
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags))
    finally:
        s.close()


def send(sock, obj):
    sock.send(obj if isinstance(obj, bytes) else json.dumps(obj).encode())


def fail(sock, what):
    try:
        send(sock, {"error": "%s: %s" % (what, traceback.format_exc())})
    finally:
        os._exit(127)


class Template:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sys = cfg["syscalls"]
        # The seccomp programs, packed once here rather than in every instance.
        self.filters = []
        for prog in cfg["seccomp"]:
            raw = b"".join(struct.pack("=HBBI", (w >> 48) & 0xFFFF, (w >> 40) & 0xFF, (w >> 32) & 0xFF,
                                       w & 0xFFFFFFFF) for w in prog)
            self.filters.append((len(prog), ctypes.create_string_buffer(raw, len(raw))))
        self.lowerdir = ":".join(cfg["lowers"])
        for m in cfg["preload"]:
            __import__(m)
        self.handler = load_handler(cfg["handler"])

    def fork_instance(self, sock, idle):
        """The outer process of an instance: fresh namespaces and root, then the inner one."""
        try:
            if idle:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            # Nothing the template's code opened reaches an instance: an inherited pipe or
            # socket would be a channel between invocations.
            keep = sock.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 0x7FFFFFFF)  # close_range(2): any bound costs the same
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            cfg = self.cfg
            check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID),
                  "unshare(mnt, net, uts, ipc, pid)")
            staging = "/.thaw/inst"
            mount("thaw", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=0700" % cfg["upper_size"])
            for d in ("upper", "work", "root"):
                os.mkdir(os.path.join(staging, d), 0o755)
            mount("overlay", staging + "/root", "overlay", MS_NODEV,
                  "lowerdir=%s,upperdir=%s/upper,workdir=%s/work,userxattr" % (self.lowerdir, staging, staging))
            socket.sethostname(cfg["hostname"])
            loopback_up()
            send(sock, b"ready")
            if sock.recv(16) != b"go":
                os._exit(0)
        except BaseException:
            fail(sock, "preparing an instance")
        pid = os.fork()
        if pid == 0:
            self.inner(sock, staging + "/root")
        try:
            _, st = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(st)
            send(sock, {"code": code} if code >= 0 else {"signal": -code})
        finally:
            os._exit(0)

    def inner(self, sock, root):
        """PID 1 of the instance's PID namespace: root, limits, privileges; then the handler."""
        cfg = self.cfg
        try:
            check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
            # After the move into the instance's cgroup, so its cgroup namespace is rooted there.
            check(libc.unshare(CLONE_NEWCGROUP), "unshare(cgroup)")
            build_root(root, cfg["ops"])
            os.chdir(root)
            check(libc.syscall(self.sys["pivot_root"], b".", b"."), "pivot_root")
            check(libc.umount2(b".", MNT_DETACH), "detach the template's root")
            os.chdir("/")
            os.chdir(cfg["cwd"])
            for res, soft, hard in cfg["rlimits"]:
                resource.setrlimit(res, (soft, hard))
            # Under the instance's memory limit the workload, not its waiting parent, is the
            # process the OOM killer should pick.
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
            keep = set(cfg["caps"])
            for c in range(cfg["last_cap"] + 1):
                if c not in keep:
                    check(libc.prctl(PR_CAPBSET_DROP, c, 0, 0, 0), "drop capability %d" % c)
            mask = sum(1 << c for c in keep)
            lo, hi = mask & 0xFFFFFFFF, mask >> 32
            uid, gid = cfg["uid"], cfg["gid"]
            if uid != 0 or gid != 0:
                # While CAP_SETUID and CAP_SETGID are still held; the permitted set survives
                # the switch, and the capset below raises the effective set again, which the
                # kernel empties when the effective uid leaves 0.
                check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
            hdr = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)
            data = ctypes.create_string_buffer(struct.pack("=6I", lo, lo, lo, hi, hi, hi), 24)
            check(libc.syscall(self.sys["capset"], hdr, data), "capset")
            check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
            check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
            for n, buf in self.filters:
                prog = SockFprog(n, ctypes.addressof(buf))
                check(libc.syscall(self.sys["seccomp"], 1, 0, ctypes.byref(prog)), "install seccomp filter")
            send(sock, b"parked")
            msg, fds, _, _ = socket.recv_fds(sock, 64, 3)
        except BaseException:
            fail(sock, "parking an instance")
        if msg != b"run" or len(fds) != 3:
            os._exit(0)
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        run_handler(self.handler, sock)

    def serve(self, ctrl):
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # instances are reaped by the kernel
        sys.stdout.flush()
        sys.stderr.flush()
        gc.collect()
        gc.freeze()  # keep the preloaded heap's pages shared with the instances
        while True:
            msg, fds, _, _ = socket.recv_fds(ctrl, 64, 1)
            if not msg:
                os._exit(0)
            if msg not in (b"fork", b"fork-idle") or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                ctrl.close()
                # Received descriptors are inheritable; a program the handler execs must not
                # get the instance socket.
                os.set_inheritable(fds[0], False)
                self.fork_instance(socket.socket(fileno=fds[0]), msg == b"fork-idle")
            os.close(fds[0])


def load_handler(spec):
    module, _, function = spec.rpartition(":")
    if not module or not function:
        raise ValueError("handler %r is not of the form module:function or path.py:function" % spec)
    if module.endswith(".py") or "/" in module:
        import importlib.util
        s = importlib.util.spec_from_file_location("thaw_handler", module)
        if s is None:
            raise ImportError("cannot load handler file %s" % module)
        m = importlib.util.module_from_spec(s)
        sys.modules["thaw_handler"] = m
        s.loader.exec_module(m)
    else:
        import importlib
        m = importlib.import_module(module)
    fn = getattr(m, function)
    if not callable(fn):
        raise TypeError("handler %s is not callable" % spec)
    return fn


def run_handler(handler, sock):
    """Reads the payload from stdin, calls the handler, writes its result to stdout, reports
    the exit code and exits.

    The code is reported before exiting because tearing down the process (its address space,
    its PID namespace) takes milliseconds the caller need not wait for. The handler could use
    the socket too, but it could only misreport its own invocation, which the function can do
    anyway by what it returns; a crash (a signal) is reported by the outer process."""
    random.seed()  # from os.urandom: no two instances share the template's random state
    code = 0
    try:
        payload = sys.stdin.buffer.read()
        result = handler(payload)
        if result is None:
            out = b""
        elif isinstance(result, bytes):
            out = result
        elif isinstance(result, str):
            out = result.encode()
        else:
            out = json.dumps(result).encode()
        sys.stdout.flush()
        view = memoryview(out)
        while view:
            view = view[os.write(1, view):]
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        send(sock, {"code": code})
    finally:
        os._exit(code)


def main():
    # Non-dumpable, and so every instance from its first instruction (the flag is inherited by
    # fork): the template, lacking CAP_SYS_PTRACE, cannot open an instance's memory,
    # descriptors or root through /proc, so the function's code in the template cannot carry
    # one invocation's data into the next. (A program a handler execs is dumpable again.)
    check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    ctrl = socket.socket(fileno=CTRL_FD)
    cfg = json.loads(ctrl.recv(1 << 20))
    try:
        t = Template(cfg)
    except BaseException:
        send(ctrl, {"error": traceback.format_exc()})
        os._exit(1)
    send(ctrl, {"ok": os.getpid()})
    t.serve(ctrl)


if __name__ == "__main__":
    main()
