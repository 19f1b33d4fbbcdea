"""Run untrusted generated code and judge it by its unit tests, inside an OS-level jail (bubblewrap).

    from scalelab.lm.posttrain.tasks.sandbox import run_tests, run_python, jail_status
    res = run_tests("def add(a, b):\\n    return a + b", ["assert add(2, 3) == 5"])
    res.passed          # True: judged outside the jail on the value add(2, 3) returned inside it
    jail_status()       # JailStatus(available=True, reason='bubblewrap ...')

The jail (``bwrap``, Debian package ``bubblewrap``; ``scripts/setup_sandbox.sh`` installs it) gives the program:
- its own user, PID, network, IPC, UTS and cgroup namespaces: no network but its own loopback, nothing else to see
  or signal, and the whole tree dies with it (``--die-with-parent``; the evaluator kills it at the wall-clock limit);
- a read-only root made only of the interpreter and the system libraries (no /etc, /home, /proc, working tree), and
  one writable ``/tmp``, a tmpfs of ``disk_mb``; only PATH, HOME, LANG and PYTHONDONTWRITEBYTECODE in the environment;
- a seccomp filter: no new process (threads only), no exec after start, none of the kernel's privileged interfaces;
  one process under RLIMIT_AS is then a whole-tree memory limit (the tmpfs quota adds at most ``disk_mb``).
The pass is decided here, never by the program: each test ``assert <expr>`` is split into the parts that need the
program (calls of its functions, its names), which the jail evaluates and sends back as plain data (no pickle), and
the rest (``==``, literals, ``set()``, ``math.isclose``...), which this process applies to the decoded values. The
expected answers never enter the jail; exit statuses, printed markers, ``os._exit(0)`` and a monkeypatched harness
count for nothing, and an object whose ``__eq__`` always says yes arrives as plain data or not at all.
Without a jail, ``run_tests`` refuses (``SandboxUnavailable``) unless ``unsafe=True``: then the same runner runs in a
plain child process with the same limits and seccomp filter but the user's file system and network.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
import operator
import os
import platform
import reprlib
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scalelab.lm.posttrain.tasks import sandbox_runner
from scalelab.lm.posttrain.tasks.sandbox_runner import SYSCALLS, decode, seccomp_filter

RUNNER = Path(sandbox_runner.__file__)
JAIL_DIR = "/run/scalelab"          # where the runner and the job appear inside the jail
OUTPUT_CAP = 64 * 1024              # bytes of stdout / stderr kept (the rest is read and dropped)
VALUES_CAP = 4 * 1024 * 1024        # bytes of test values accepted; more ends the run as a failure
KILL_GRACE_S = 2.0                  # after a kill or exit, how long to wait for the pipes to close


class SandboxUnavailable(RuntimeError):
    """No working jail on this machine (and the caller did not ask for unsafe execution)."""


@dataclass
class SandboxResult:
    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    tests_passed: int = 0
    tests_total: int = 0
    error: str = ""          # why it did not pass: the first failing test, the program's exception, ...
    jailed: bool = True

    @property
    def reason(self) -> str:
        if self.passed:
            return "passed"
        if self.timed_out:
            return "timeout"
        return (self.error or f"exit status {self.returncode}")[:200]


@dataclass(frozen=True)
class JailStatus:
    available: bool
    reason: str


# ---------------------------------------------------------------------------------------------- the judge

SAFE_NAMES = {n: getattr(builtins, n) for n in (
    "abs", "all", "any", "bool", "bytes", "chr", "complex", "dict", "divmod", "enumerate", "float", "frozenset", "hex",
    "int", "isinstance", "len", "list", "max", "min", "oct", "ord", "range", "repr", "reversed", "round", "set",
    "sorted", "str", "sum", "tuple", "type", "zip")}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.BitAnd: operator.and_,
           ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.LShift: operator.lshift,
           ast.RShift: operator.rshift}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_STRUCTURAL = (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp,
               ast.Subscript, ast.Slice, ast.IfExp)


class _Failed(Exception):
    """A test that did not hold (or a value it needed that the program did not deliver)."""


def _is_safe_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in SAFE_NAMES
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math" \
        and not func.attr.startswith("_") and hasattr(math, func.attr)


def module_names(code: str) -> set[str]:
    """Names a script binds at module level (or declares ``global``): a test's ``sum`` is then the program's."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set()
    names = {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):   # ``import math`` is the judge's math too; ``import numpy as math`` is not
            names.update(a.asname for a in node.names if a.asname and a.asname != a.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif not isinstance(node, ast.Lambda | ast.comprehension | ast.ListComp | ast.SetComp | ast.DictComp |
                            ast.GeneratorExp):
            todo.extend(ast.iter_child_nodes(node))
    return names


def plan_tests(tests: list[str], program_names: set[str] = frozenset()) -> tuple[list[ast.expr], list[str]]:
    """Each ``assert`` test -> (its condition with the program's parts replaced by holes, the holes' source).

    What the judge can compute from plain values stays here; a call of anything but a few pure builtins the program
    does not redefine (``program_names``), a name the program defines, a comprehension or lambda becomes a hole the
    jail fills with a value."""
    holes: list[str] = []

    def safe(func: ast.expr) -> bool:
        root = func.value if isinstance(func, ast.Attribute) else func
        return _is_safe_call(func) and isinstance(root, ast.Name) and root.id not in program_names

    def lower(node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name | ast.Attribute) and safe(node):
            return node
        if isinstance(node, ast.Call) and safe(node.func) and \
                not any(isinstance(a, ast.Starred) for a in node.args) and all(k.arg for k in node.keywords):
            return ast.Call(node.func, [lower(a) for a in node.args],
                            [ast.keyword(k.arg, lower(k.value)) for k in node.keywords])
        if isinstance(node, _STRUCTURAL) and not (isinstance(node, ast.Dict) and None in node.keys) and \
                not any(isinstance(c, ast.Starred) for c in ast.iter_child_nodes(node)):
            for name, value in ast.iter_fields(node):
                if isinstance(value, ast.expr):
                    setattr(node, name, lower(value))
                elif isinstance(value, list):
                    setattr(node, name, [lower(v) if isinstance(v, ast.expr) else v for v in value])
            return node
        holes.append(ast.unparse(node))
        return ast.Name(f"__hole_{len(holes) - 1}", ast.Load())

    conditions = []
    for test in tests:
        tree = ast.parse(test.strip())
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
            raise ValueError(f"a test must be one assert statement: {test[:100]!r}")
        conditions.append(lower(tree.body[0].test))
    return conditions, holes


def _judge_eval(node: ast.expr, values: dict[int, tuple[str, object]]) -> object:
    """Evaluate a planned condition: only the node types ``plan_tests`` keeps, on plain values."""
    ev = functools.partial(_judge_eval, values=values)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id.startswith("__hole_"):
            kind, value = values.get(int(node.id[7:]), ("missing", None))
            if kind == "ok":
                return value
            raise _Failed(value if kind == "error" else "no value: the program stopped before computing it")
        return SAFE_NAMES[node.id]
    if isinstance(node, ast.Attribute):
        return getattr(math, node.attr)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [ev(e) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {ev(k): ev(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BoolOp):
        result = None
        for v in node.values:
            result = ev(v)
            if bool(result) == isinstance(node.op, ast.Or):
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](ev(node.operand))
    if isinstance(node, ast.BinOp):
        a, b = ev(node.left), ev(node.right)
        big = isinstance(b, int) and abs(b) > 10_000
        if big and (isinstance(node.op, ast.LShift) or (isinstance(node.op, ast.Pow) and a not in (0, 1, -1))):
            raise _Failed("a power or shift too large for the judge")
        if type(node.op) not in _BINARY:
            raise _Failed(f"operator {type(node.op).__name__} not supported by the judge")
        return _BINARY[type(node.op)](a, b)
    if isinstance(node, ast.Compare):
        left = ev(node.left)
        for op, comp in zip(node.ops, node.comparators):
            right = ev(comp)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        return ev(node.value)[ev(node.slice)]
    if isinstance(node, ast.Slice):
        return slice(*(ev(p) if p is not None else None for p in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.IfExp):
        return ev(node.body) if ev(node.test) else ev(node.orelse)
    if isinstance(node, ast.Call):
        return ev(node.func)(*[ev(a) for a in node.args], **{k.arg: ev(k.value) for k in node.keywords})
    raise _Failed(f"{type(node).__name__} not supported by the judge")


def parse_values(raw: bytes, n_holes: int) -> tuple[dict[int, tuple[str, object]], str]:
    """The runner's JSON lines -> {hole: ("ok", value) | ("error", message)}, and the program's own error if any.

    Anything malformed (a duplicate, an unknown key, bad JSON) voids the whole run: the program can write here too."""
    values: dict[int, tuple[str, object]] = {}
    program_error = ""
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            return {}, "the result channel held something that is not JSON"
        if not isinstance(msg, dict):
            return {}, "the result channel held something that is not a message"
        if "i" in msg:
            i = msg["i"]
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_holes or i in values:
                return {}, "the result channel held a duplicate or unknown value"
            if "error" in msg:
                values[i] = ("error", str(msg["error"])[:500])
                continue
            try:
                values[i] = ("ok", decode(msg.get("v")))
            except (ValueError, TypeError, RecursionError, OverflowError) as exc:
                values[i] = ("error", f"undecodable value: {exc}"[:500])
        elif "program_error" in msg or "setup_error" in msg:
            program_error = program_error or str(msg.get("program_error") or msg.get("setup_error"))[:500]
        elif msg != {"done": True}:
            return {}, "the result channel held an unknown message"
    return values, program_error


def _got(cond: ast.expr, values: dict[int, tuple[str, object]], holes: list[str]) -> str:
    """' (got f(1) = 3)': what the program's parts of a failed test evaluated to."""
    shown = [f"{holes[i]} = {reprlib.repr(values[i][1])}" for node in ast.walk(cond)
             if isinstance(node, ast.Name) and node.id.startswith("__hole_")
             and (i := int(node.id[7:])) in values and values[i][0] == "ok"]
    return f" (got {'; '.join(shown)})" if shown else ""


def judge(tests: list[str], conditions: list[ast.expr], values: dict[int, tuple[str, object]],
          holes: list[str]) -> tuple[int, str]:
    """(how many tests hold, the first failure's reason)."""
    passed, first = 0, ""
    for k, cond in enumerate(conditions):
        try:
            ok = bool(_judge_eval(cond, values))
            reason = "" if ok else f"test {k + 1} failed: {tests[k].strip()}{_got(cond, values, holes)}"[:400]
        except _Failed as exc:
            ok, reason = False, f"test {k + 1}: {exc}"
        except Exception as exc:  # noqa: BLE001 - comparisons of the values themselves (TypeError, ...)
            ok, reason = False, f"test {k + 1}: {type(exc).__name__}: {exc}"[:300]
        passed += ok
        first = first or reason
    return passed, first


# ---------------------------------------------------------------------------------------------- the jail

def base_python() -> str:
    """The interpreter the jail runs: the real executable under a virtual environment (its site is never used)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def jail_binds() -> list[str]:
    """bwrap arguments for the read-only root: the interpreter's prefix and the system libraries, nothing else."""
    args: list[str] = []
    for top in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/lib32", "/usr/lib32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    python = base_python()
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    for prefix in sorted(prefixes):
        if prefix not in ("/", "/usr") and os.path.isdir(prefix):
            args += ["--ro-bind", prefix, prefix]
    if "/usr" in prefixes:
        args += ["--ro-bind", "/usr/bin", "/usr/bin"]
    if not any(python.startswith(p.rstrip("/") + "/") for p in prefixes | {"/usr/lib"}):
        args += ["--ro-bind", python, python]
    return args


def bwrap_path() -> str | None:
    found = shutil.which("bwrap")
    return found or next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap") if os.access(p, os.X_OK)), None)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)      # no MFD_CLOEXEC: bwrap reads it by number
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _collect(proc: subprocess.Popen, streams: dict[str, int], deadline: float) -> tuple[dict[str, bytes], bool, str]:
    """Read every stream until it closes, within bounds: caps on what is kept, a kill at the deadline, and a short
    grace after the kill or the exit, so a descriptor held open by anything at all cannot hang the evaluator."""
    sel = selectors.DefaultSelector()
    for name, fd in streams.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    bufs = {name: bytearray() for name in streams}
    caps = {"stdout": OUTPUT_CAP, "stderr": OUTPUT_CAP, "values": VALUES_CAP}
    timed_out, problem, hard_end = False, "", None
    try:
        while sel.get_map():
            now = time.monotonic()
            if hard_end is None and (now >= deadline or proc.poll() is not None):
                timed_out = proc.poll() is None
                _kill(proc)
                hard_end = now + KILL_GRACE_S
            if hard_end is not None and now >= hard_end:
                break
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.data]
                if len(buf) < caps[key.data]:
                    buf += data[:caps[key.data] - len(buf)]
                elif key.data == "values":
                    problem = f"more than {VALUES_CAP} bytes of test values"
                    _kill(proc)
    finally:
        sel.close()
        for fd in streams.values():
            os.close(fd)
        _kill(proc)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            problem = problem or "the sandbox process did not end"
    return {k: bytes(v) for k, v in bufs.items()}, timed_out, problem


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the runner's process group, only while its leader is unreaped (so the id cannot have been reused)."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _launch(job: dict, timeout_s: float, unsafe: bool) -> tuple[dict[str, bytes], int | None, bool, str]:
    """Start the runner on ``job`` (jailed, or as a plain child when ``unsafe``) and collect what it says."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    job = {**job, "out_fd": w}
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    fds: list[int] = [w]
    tmp = None
    try:
        if unsafe:
            tmp = tempfile.mkdtemp(prefix="scalelab-unsafe-exec-")
            Path(tmp, "job.json").write_text(json.dumps(job), encoding="utf-8")
            cmd = [base_python(), "-I", "-S", str(RUNNER), str(Path(tmp, "job.json"))]
            env = {**env, "HOME": tmp, "TMPDIR": tmp}
            cwd = tmp
        else:
            job_fd = _memfd("scalelab-job", json.dumps(job).encode("utf-8"))
            sec_fd = _memfd("scalelab-seccomp", seccomp_filter(deny_exec=False))
            fds += [job_fd, sec_fd]
            disk = int(job["disk_mb"]) * 1024 * 1024
            cmd = [bwrap_path() or "bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
                   "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                   "--hostname", "sandbox", "--clearenv", *[x for k, v in env.items() for x in ("--setenv", k, v)],
                   *jail_binds(), "--dev", "/dev", "--remount-ro", "/dev", "--size", str(disk), "--tmpfs", "/tmp",
                   "--dir", JAIL_DIR, "--ro-bind", str(RUNNER), f"{JAIL_DIR}/runner.py",
                   "--ro-bind-data", str(job_fd), f"{JAIL_DIR}/job.json", "--seccomp", str(sec_fd),
                   "--remount-ro", "/", "--chdir", "/tmp",
                   base_python(), "-I", "-S", f"{JAIL_DIR}/runner.py", f"{JAIL_DIR}/job.json"]
            cwd = "/"
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=fds, cwd=cwd, env=env, start_new_session=True)
    except BaseException:
        os.close(r)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    try:
        streams = {"stdout": os.dup(proc.stdout.fileno()), "stderr": os.dup(proc.stderr.fileno()), "values": r}
        proc.stdout.close()
        proc.stderr.close()
        out, timed_out, problem = _collect(proc, streams, time.monotonic() + timeout_s)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return out, proc.returncode, timed_out, problem


def run_tests(program: str, tests: list[str], setup: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
              disk_mb: int = 32, unsafe: bool = False) -> SandboxResult:
    """Run ``program`` then ``setup`` in the jail and judge each ``assert`` of ``tests`` on the values it returns.

    ``unsafe=True`` runs without the jail when there is none (the user's ``--unsafe-exec``); otherwise a machine
    without a working jail raises ``SandboxUnavailable``."""
    start = time.perf_counter()
    conditions, holes = plan_tests(tests, module_names(program) | module_names(setup))
    status = jail_status()
    if not status.available and not unsafe:
        raise SandboxUnavailable(status.reason)
    jailed = status.available
    job = {"program": program, "setup": setup, "expressions": holes, "memory_mb": memory_mb, "disk_mb": disk_mb,
           "file_mb": disk_mb, "cpu_s": max(1, math.ceil(timeout_s) + 1)}
    out, returncode, timed_out, problem = _launch(job, timeout_s, unsafe=not jailed)
    values, program_error = parse_values(out["values"], len(holes))
    n_ok, first = judge(tests, conditions, values, holes)
    passed = bool(tests) and n_ok == len(tests) and not (problem or program_error or timed_out)
    if returncode is not None and returncode < 0 and -returncode == signal.SIGXCPU:
        timed_out = True
    error = problem or program_error or first
    if not passed and not error:
        error = f"exit status {returncode}"
    return SandboxResult(passed, returncode, timed_out, out["stdout"].decode("utf-8", "replace"),
                         out["stderr"].decode("utf-8", "replace"), time.perf_counter() - start, n_ok, len(tests),
                         "" if passed else error, jailed)


def split_program(code: str) -> tuple[str, list[str]]:
    """A script -> (everything before its trailing top-level asserts, those asserts as tests)."""
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return code, []
    k = len(body)
    while k > 0 and isinstance(body[k - 1], ast.Assert):
        k -= 1
    lines = code.splitlines(keepends=True)
    head = "".join(lines[:body[k].lineno - 1]) if k < len(body) else code
    return head, [ast.get_source_segment(code, node) or ast.unparse(node) for node in body[k:]]


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, disk_mb: int = 32,
               unsafe: bool = False) -> SandboxResult:
    """``run_tests`` on a script whose trailing top-level ``assert`` statements are its tests (none: never passes)."""
    program, tests = split_program(code)
    return run_tests(program, tests, timeout_s=timeout_s, memory_mb=memory_mb, disk_mb=disk_mb, unsafe=unsafe)


@functools.lru_cache(maxsize=1)
def jail_status() -> JailStatus:
    """Whether the jail works here: bwrap present and a probe run inside it judged as expected."""
    if not sys.platform.startswith("linux"):
        return JailStatus(False, f"the sandbox needs Linux namespaces ({sys.platform})")
    if platform.machine() not in SYSCALLS:
        return JailStatus(False, f"no seccomp table for {platform.machine()} (x86_64 and aarch64 are supported)")
    bwrap = bwrap_path()
    if bwrap is None:
        return JailStatus(False, "bubblewrap (bwrap) is not installed: run scripts/setup_sandbox.sh or "
                                 "apt-get install bubblewrap")
    probe = "import os\ntry:\n    os.fork()\n    forked = True\nexcept OSError:\n    forked = False\n"
    job = {"program": probe, "setup": "", "expressions": ["forked"], "memory_mb": 256, "disk_mb": 1, "file_mb": 1,
           "cpu_s": 10}
    try:
        out, returncode, timed_out, problem = _launch(job, 10.0, unsafe=False)
    except OSError as exc:
        return JailStatus(False, f"bwrap could not start: {exc}")
    values, program_error = parse_values(out["values"], 1)
    if values.get(0) != ("ok", False) or problem or program_error:
        why = (out["stderr"].decode("utf-8", "replace").strip().splitlines() or [problem or program_error or
                                                                              f"exit status {returncode}"])[-1]
        return JailStatus(False, f"bwrap is installed but the jail does not work here: {why[:200]}")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return JailStatus(True, f"{version or 'bubblewrap'} at {bwrap}")
