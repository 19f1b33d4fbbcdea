"""The part of the sandbox that runs *inside* the jail: run a program, then report the values its tests ask for.

This file is bound read-only into the jail and started as ``python -I -S sandbox_runner.py JOB``, so it imports only
the standard library (never scalelab). The evaluator (``sandbox.py``) imports its pure helpers: the seccomp program
(``seccomp_filter``) and the value codec (``encode``/``decode``).

What it does, in order:
1. reads the job (JSON: the program, the setup code, and the *expressions* whose values the tests need, never the
   expected answers), then lowers its own limits: address space, CPU seconds, file size, open files, no core files;
2. installs a seccomp filter (through ctypes) that refuses new processes and ``execve`` (the jail's own filter already
   refuses new processes; this one adds exec, which the jail must allow once to start this interpreter);
3. runs the program and the setup code, then evaluates each expression and writes one JSON line per value to the
   result descriptor: ``{"i": k, "v": <encoded value>}`` or ``{"i": k, "error": "..."}``.
The program runs in this same process and can tamper with all of the above; that is harmless because the evaluator
trusts nothing here but plain data: it decodes the values itself and applies the tests' comparisons outside the jail.
"""

from __future__ import annotations

import json
import math
import os
import platform
import struct
import sys
import types

# ---------------------------------------------------------------------------------------------- seccomp (classic BPF)

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Syscalls refused with EPERM: process creation and the kernel interfaces an evaluated program never needs (module
# loading, mounts, namespaces, ptrace and cross-process memory, BPF, keyrings, io_uring, userfaultfd), and the memory
# that RLIMIT_AS does not count (System V shared memory and message queues, memfd files).
_DENY = ["shmget", "msgget", "semget", "memfd_create", "memfd_secret", "ptrace", "process_vm_readv",
         "process_vm_writev", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "keyctl", "add_key",
         "request_key", "bpf", "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load", "init_module",
         "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "io_uring_setup", "io_uring_enter",
         "io_uring_register", "open_by_handle_at", "name_to_handle_at", "personality", "kcmp", "pidfd_getfd",
         "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl"]
SYSCALLS = {
    "x86_64": dict(shmget=29, msgget=68, semget=64, memfd_create=319, memfd_secret=447, fork=57, vfork=58, clone=56,
                   clone3=435, execve=59, execveat=322, ptrace=101, process_vm_readv=310, process_vm_writev=311,
                   unshare=272, setns=308, mount=165, umount2=166, pivot_root=155, chroot=161, keyctl=250,
                   add_key=248, request_key=249, bpf=321, perf_event_open=298, userfaultfd=323, kexec_load=246,
                   kexec_file_load=320, init_module=175, finit_module=313, delete_module=176, reboot=169, swapon=167,
                   swapoff=168, acct=163, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                   open_by_handle_at=304, name_to_handle_at=303, personality=135, kcmp=312, pidfd_getfd=438,
                   fsopen=430, fsconfig=431, fsmount=432, fspick=433, move_mount=429, open_tree=428,
                   mount_setattr=442, quotactl=179),
    "aarch64": dict(shmget=194, msgget=186, semget=190, memfd_create=279, memfd_secret=447, clone=220, clone3=435,
                    execve=221, execveat=281, ptrace=117, process_vm_readv=270, process_vm_writev=271, unshare=97,
                    setns=268, mount=40, umount2=39, pivot_root=41, chroot=51, keyctl=219, add_key=217,
                    request_key=218, bpf=280, perf_event_open=241, userfaultfd=282, kexec_load=104,
                    kexec_file_load=294, init_module=105, finit_module=273, delete_module=106, reboot=142, swapon=224,
                    swapoff=225, acct=89, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                    open_by_handle_at=265, name_to_handle_at=264, personality=92, kcmp=272, pidfd_getfd=438,
                    fsopen=430, fsconfig=431, fsmount=432, fspick=433, move_mount=429, open_tree=428,
                    mount_setattr=442, quotactl=60),
}
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW, _RET_KILL, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
CLONE_THREAD = 0x00010000


def seccomp_filter(deny_exec: bool, arch: str | None = None) -> bytes:
    """A seccomp program (``struct sock_filter[]``): threads yes, new processes no (and no exec if asked).

    ``clone`` is allowed only with CLONE_THREAD; ``clone3`` answers ENOSYS so the C library falls back to ``clone``
    (its flags sit in memory a filter cannot read); a foreign architecture or the x32 ABI kills the process.
    """
    arch = arch or platform.machine()
    if arch not in SYSCALLS:
        raise OSError(f"no seccomp syscall table for {arch}")
    nr = SYSCALLS[arch]
    deny = [nr[n] for n in ("fork", "vfork") if n in nr] + [nr[n] for n in _DENY]
    if deny_exec:
        deny += [nr["execve"], nr["execveat"]]
    prog: list[tuple[int, int, int, int]] = []     # (code, jt, jf, k); jumps are patched below

    def emit(code: int, k: int, jt: int = 0, jf: int = 0) -> int:
        prog.append((code, jt, jf, k))
        return len(prog) - 1

    fixups: list[tuple[int, str, str]] = []  # (instruction, 'jt'|'jf', label)
    emit(_LD_ABS, 4)                                            # seccomp_data.arch
    fixups.append((emit(_JEQ, AUDIT_ARCH[arch]), "jf", "kill"))
    emit(_LD_ABS, 0)                                            # seccomp_data.nr
    if arch == "x86_64":
        fixups.append((emit(_JGE, 0x40000000), "jt", "eperm"))  # the x32 ABI
    for n in deny:
        fixups.append((emit(_JEQ, n), "jt", "eperm"))
    fixups.append((emit(_JEQ, nr["clone3"]), "jt", "enosys"))
    fixups.append((emit(_JEQ, nr["clone"]), "jt", "clone"))
    emit(_RET, _RET_ALLOW)
    labels = {"clone": emit(_LD_ABS, 16)}                       # args[0], low 32 bits (little-endian)
    fixups.append((emit(_JSET, CLONE_THREAD), "jf", "eperm"))  # a thread: fall through to allow
    emit(_RET, _RET_ALLOW)
    labels["eperm"] = emit(_RET, _RET_ERRNO | _EPERM)
    labels["enosys"] = emit(_RET, _RET_ERRNO | _ENOSYS)
    labels["kill"] = emit(_RET, _RET_KILL)
    for i, which, label in fixups:
        code, jt, jf, k = prog[i]
        off = labels[label] - i - 1
        if not 0 <= off < 256:
            raise OSError("seccomp program too long for an 8-bit jump")
        prog[i] = (code, off, jf, k) if which == "jt" else (code, jt, off, k)
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def install_seccomp(program: bytes) -> None:
    """Load a seccomp program into this process (no_new_privs first, so no privilege is needed)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


# ---------------------------------------------------------------------------------------------- value codec

class Unencodable(TypeError):
    """A value that is not plain data (a class instance, a function, ...): a test cannot be judged on it."""


MAX_ITEMS = 1_000_000   # elements in one encoded value, iterators included
MAX_DEPTH = 100
_ITERATOR_TYPES = tuple(type(x) for x in (iter([]), iter(()), iter(""), iter(set()), iter({}), iter(range(0)),
                                          map(int, ()), filter(None, ()), zip(), enumerate(()), reversed([]),
                                          iter(b""), iter(bytearray())))


def encode(value: object) -> object:
    """Plain data -> JSON-able tagged structure. Subclasses are reduced to their base type through the base type's
    own methods, so an ``__eq__`` that always answers True does not survive the trip."""
    budget = [MAX_ITEMS]

    def enc(v: object, depth: int) -> object:
        budget[0] -= 1
        if budget[0] < 0:
            raise Unencodable(f"more than {MAX_ITEMS} items")
        if depth > MAX_DEPTH:
            raise Unencodable(f"nested deeper than {MAX_DEPTH}")
        t = type(v)
        if v is None or t is bool:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            v = int.__index__(v)
            return v if -(1 << 60) < v < (1 << 60) else {"I": hex(v)}
        if isinstance(v, float):
            v = float.__float__(v)
            return v if math.isfinite(v) else {"F": repr(v)}
        if isinstance(v, str):
            return {"S": str.__str__(v)} if t is not str else v
        if isinstance(v, complex):
            return {"c": [enc(v.real, depth + 1), enc(v.imag, depth + 1)]}
        if isinstance(v, bytes | bytearray):
            return {"ba" if isinstance(v, bytearray) else "b": bytes(memoryview(v)).hex()}
        if isinstance(v, list):
            return [enc(x, depth + 1) for x in list.__iter__(v)]
        if isinstance(v, tuple):
            return {"t": [enc(x, depth + 1) for x in tuple.__iter__(v)]}
        if isinstance(v, frozenset):
            return {"f": [enc(x, depth + 1) for x in frozenset.__iter__(v)]}
        if isinstance(v, set):
            return {"s": [enc(x, depth + 1) for x in set.__iter__(v)]}
        if isinstance(v, dict):
            tag = {"Counter": "C", "OrderedDict": "O", "defaultdict": "D"}.get(t.__name__, "d") \
                if t.__module__ == "collections" else "d"
            return {tag: [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in dict.items(v)]}
        if t is range:
            return {"r": [v.start, v.stop, v.step]}
        if t.__name__ in ("dict_keys", "dict_values", "dict_items", "deque") and t.__module__ in ("builtins",
                                                                                                  "collections"):
            return {t.__name__: [enc(x, depth + 1) for x in v]}
        if isinstance(v, types.GeneratorType) or t in _ITERATOR_TYPES:
            items = []
            for x in v:
                items.append(enc(x, depth + 1))
            return {"it": items}
        raise Unencodable(f"a value of type {t.__name__} is not plain data")

    return enc(value, 0)


def decode(data: object) -> object:
    """The inverse of ``encode``: only plain data comes out, whatever the input."""
    import collections

    def dec(d: object, depth: int) -> object:
        if depth > MAX_DEPTH + 1:
            raise ValueError("nested too deep")
        if d is None or isinstance(d, bool | int | float | str):
            return d
        if isinstance(d, list):
            return [dec(x, depth + 1) for x in d]
        if not isinstance(d, dict) or len(d) != 1:
            raise ValueError("not an encoded value")
        (tag, x), = d.items()
        items = (lambda: [dec(y, depth + 1) for y in x]) if isinstance(x, list) else None
        pairs = (lambda: [(dec(k, depth + 1), dec(y, depth + 1)) for k, y in x]) if isinstance(x, list) else None
        if tag == "I" and isinstance(x, str):
            return int(x, 16)
        if tag == "F" and x in ("inf", "-inf", "nan"):
            return float(x)
        if tag == "S" and isinstance(x, str):
            return x
        if tag in ("b", "ba") and isinstance(x, str):
            return bytes.fromhex(x) if tag == "b" else bytearray.fromhex(x)
        if items is None:
            raise ValueError(f"bad encoded value with tag {tag!r}")
        build = {"c": lambda: complex(*items()), "t": lambda: tuple(items()), "f": lambda: frozenset(items()),
                 "s": lambda: set(items()), "d": lambda: dict(pairs()), "C": lambda: collections.Counter(dict(pairs())),
                 "O": lambda: collections.OrderedDict(pairs()),
                 "D": lambda: collections.defaultdict(None, pairs()), "r": lambda: range(*[int(i) for i in x]),
                 "dict_keys": lambda: dict.fromkeys(items()).keys(),
                 "dict_values": lambda: dict(enumerate(items())).values(),
                 "dict_items": lambda: dict(items()).items(), "deque": lambda: collections.deque(items()),
                 "it": lambda: iter(items())}.get(tag)
        if build is None:
            raise ValueError(f"unknown tag {tag!r}")
        return build()

    return dec(data, 0)


# ---------------------------------------------------------------------------------------------- the run

def _limit(resource_mod: types.ModuleType, which: str, value: int) -> None:
    res = getattr(resource_mod, which)
    _soft, hard = resource_mod.getrlimit(res)
    value = value if hard == resource_mod.RLIM_INFINITY else min(value, hard)
    resource_mod.setrlimit(res, (value, value))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    out_fd = int(job["out_fd"])
    import resource

    mem = int(job["memory_mb"]) * 1024 * 1024
    _limit(resource, "RLIMIT_AS", mem)
    _limit(resource, "RLIMIT_CPU", int(job["cpu_s"]))
    _limit(resource, "RLIMIT_FSIZE", int(job["file_mb"]) * 1024 * 1024)
    _limit(resource, "RLIMIT_NOFILE", 64)
    _limit(resource, "RLIMIT_CORE", 0)
    _limit(resource, "RLIMIT_NPROC", 64)   # threads; process creation is refused outright below
    try:
        install_seccomp(seccomp_filter(deny_exec=True))
    except Exception as exc:  # noqa: BLE001 - any failure here means the run must not go on
        _write_all(out_fd, (json.dumps({"setup_error": _error(exc)}) + "\n").encode())
        return 3
    os.closerange(3, out_fd)
    os.closerange(out_fd + 1, 1 << 16)
    send = lambda msg: _write_all(out_fd, (json.dumps(msg) + "\n").encode())  # noqa: E731
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    for part in ("program", "setup"):
        try:
            exec(compile(job[part], f"<{part}>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: exiting early is a failure
            send({"program_error": f"{part}: {_error(exc)}"})
            return 1
    for i, expr in enumerate(job["expressions"]):
        try:
            value = eval(compile(expr, f"<test value {i}>", "eval"), namespace)
            send({"i": i, "v": encode(value)})
        except BaseException as exc:  # noqa: BLE001
            send({"i": i, "error": _error(exc)})
    send({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
