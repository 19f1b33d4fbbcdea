"""Run untrusted generated code (and its unit tests) in a separate, limited Python process.

    from scalelab.lm.posttrain.tasks.sandbox import run_python
    res = run_python("def f(x):\\n    return x + 1\\nassert f(1) == 2", timeout_s=5)
    res.passed   # True

Isolation, best effort (this is not a security boundary; run truly hostile code in a container):
- a fresh ``python -I`` (isolated mode: no user site, no PYTHONPATH) with the script fed on stdin (the code cannot
  read the sentinel that marks success), cwd, HOME and TMPDIR set to a new temporary folder removed afterwards;
- resource limits: address space (RLIMIT_AS, default 512 MiB), CPU seconds, file size (16 MiB), no core files;
- a wall-clock timeout that kills the whole process group (an infinite loop fails, it does not hang the evaluator);
- a preamble that makes ``open``/``os.open`` for writing, and file removal/rename/mkdir, refuse paths outside the
  temporary folder, and disables starting other processes (``os.system``, ``subprocess``, ``os.fork``, ``exec*``).
Success means exit status 0 *and* the per-run sentinel printed after the last test, so ``sys.exit(0)`` in the
candidate before the asserts does not count as a pass.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

_PREAMBLE = r'''
def _scalelab_guard(root):
    import builtins, io, os, shutil, subprocess
    root = os.path.realpath(root)
    def inside(path):
        if isinstance(path, int):
            return True  # an already-open file descriptor
        p = os.path.realpath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep) or p == "/dev/null"
    def refuse(what, path=None):
        raise PermissionError(f"sandbox: {what} outside the sandbox folder is not allowed: {path!r}")
    real_open, real_os_open = builtins.open, os.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            refuse("writing", file)
        return real_open(file, mode, *args, **kwargs)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            refuse("writing", path)
        return real_os_open(path, flags, *args, **kwargs)
    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    def guard_paths(name, n_paths):
        real = getattr(os, name, None)
        if real is None:
            return
        def guarded(*args, **kwargs):
            for p in args[:n_paths]:
                if not inside(p):
                    refuse(name, p)
            return real(*args, **kwargs)
        setattr(os, name, guarded)
    for name in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "removedirs", "truncate", "chmod", "chown",
                 "utime", "mkfifo", "mknod"):
        guard_paths(name, 1)
    for name in ("rename", "replace", "link", "symlink"):
        guard_paths(name, 2)
    real_rmtree = shutil.rmtree
    def guarded_rmtree(path, *args, **kwargs):
        if not inside(path):
            refuse("rmtree", path)
        return real_rmtree(path, *args, **kwargs)
    shutil.rmtree = guarded_rmtree
    def no_processes(*args, **kwargs):
        raise PermissionError("sandbox: starting processes is not allowed")
    for name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execle", "execlp", "execlpe",
                 "execvp", "execvpe", "spawnl", "spawnle", "spawnv", "spawnve", "posix_spawn", "posix_spawnp",
                 "kill", "killpg"):
        if hasattr(os, name):
            setattr(os, name, no_processes)
    subprocess.Popen = no_processes
    subprocess.run = subprocess.call = subprocess.check_call = subprocess.check_output = no_processes

_scalelab_guard(__ROOT__)
del _scalelab_guard
'''


@dataclass
class SandboxResult:
    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float

    @property
    def reason(self) -> str:
        if self.passed:
            return "passed"
        if self.timed_out:
            return "timeout"
        last = self.stderr.strip().splitlines()[-1:] or [f"exit status {self.returncode}"]
        return last[0][:200]


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:
        import resource

        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, guard: bool = True) -> SandboxResult:
    """Run ``code`` (candidate + tests) in a limited subprocess; passed = exit 0 and reached the end."""
    sentinel = "SCALELAB-SANDBOX-OK-" + secrets.token_hex(16)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scalelab-sandbox-") as root:
        script = (_PREAMBLE.replace("__ROOT__", repr(root)) if guard else "") + "\n" + code + \
            f"\n\nprint({sentinel!r}, flush=True)\n"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": root, "TMPDIR": root, "TEMP": root,
               "TMP": root, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([sys.executable, "-I", "-"], cwd=root, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(memory_mb, max(1, int(timeout_s + 1))))
        timed_out = False
        try:
            out, err = proc.communicate(script.encode("utf-8"), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
    passed = not timed_out and proc.returncode == 0 and sentinel in stdout
    if proc.returncode is not None and proc.returncode < 0 and -proc.returncode == signal.SIGXCPU:
        timed_out = True
    return SandboxResult(passed, proc.returncode, timed_out, stdout.replace(sentinel, "").strip()[-2000:],
                         stderr[-2000:], time.perf_counter() - start)
