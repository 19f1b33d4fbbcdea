"""The sandbox for model-written code: hostile programs stay inside the jail, forged passes fail, honest code passes.

Every hostile program is written so that the attack, had it worked, would show: on this machine (a file written or
deleted, a listener that received a byte, a process killed, a secret printed) or as a pass of a test it should fail.
All of them run in one batch, in parallel (module fixture ``arena``); each kind is then its own test. Without a
working jail these tests skip, except under CI=true, where they fail: CI installs the jail (scripts/setup_sandbox.sh).
"""

from __future__ import annotations

import ast
import os
import re
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest
from data_fixtures import needs_sets

from scalelab.lm.posttrain.tasks import sandbox
from scalelab.lm.posttrain.tasks.sandbox import (
    JailStatus,
    SandboxUnavailable,
    jail_status,
    plan_tests,
    run_python,
    run_tests,
)
from scalelab.lm.posttrain.tasks.sandbox_runner import MAX_DEPTH, decode, encode, seccomp_filter

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
STATUS = jail_status()


@pytest.fixture(scope="module")
def jail() -> None:
    """Tests that need the jail: skipped without one, failed without one under CI (which installs it)."""
    if not STATUS.available:
        if IN_CI:
            pytest.fail(f"CI must run the sandbox tests, but the jail does not work here: {STATUS.reason}")
        pytest.skip(f"no jail here: {STATUS.reason}")


# ----------------------------------------------------------------------------------------------- the hostile programs

WRONG_ADD = "def add(a, b):\n    return a - b\n"
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(10, 5) == 15"]
ATTACK = ["assert attack() == True"]
NEVER = ["assert attack() == 'the attack reached outside'"]   # host-side checks decide these
HANG_S = 1.5


@dataclass
class Hostile:
    kind: str
    code: str
    tests: list[str] = field(default_factory=lambda: list(ATTACK))
    expect: str = ""                   # regex the failure reason must match: shows which mechanism stopped it
    timeout_s: float = 5.0
    host_check: Callable[[dict], None] | None = None
    how: str = ""                      # for the report table


def _absent(name: str) -> Callable[[dict], None]:
    def check(a: dict) -> None:
        assert not (a["dir"] / name).exists(), f"{name} was written outside the jail"
    return check


def _canary_intact(a: dict) -> None:
    canary = a["canary"]
    assert canary.read_text() == "canary" and stat.S_IMODE(canary.stat().st_mode) == 0o644
    assert (a["dir"] / "sub" / "keep.txt").read_text() == "keep"


def _no_connection(name: str) -> Callable[[dict], None]:
    def check(a: dict) -> None:
        assert not a["hits"][name], f"the {name} listener was reached: {a['hits'][name]}"
    return check


def _victim_alive(a: dict) -> None:
    assert a["victim"].poll() is None, "the victim process was killed from inside the jail"


def _secret_kept(a: dict) -> None:
    for kind in ("read_proc_ppid_environ", "scan_all_proc_environ", "own_environ", "read_secret_file",
                 "read_other_users_file"):
        res = a["results"][kind][0]
        for text in (res.stdout, res.stderr):     # what the program printed (the reason quotes the test itself)
            assert a["secret"] not in text and "SECRET-FILE" not in text


FILES = [
    Hostile("write_open", "def attack():\n    open('$dir/esc1', 'w').write('x')\n    return True",
            expect="Read-only|No such file", host_check=_absent("esc1"), how="mount namespace: path absent"),
    Hostile("write_posix_open", "import posix\ndef attack():\n    fd = posix.open('$dir/esc2', posix.O_CREAT | "
            "posix.O_WRONLY, 0o644)\n    posix.write(fd, b'x')\n    return True",
            expect="No such file|Read-only", host_check=_absent("esc2"), how="mount namespace"),
    Hostile("write_io_fileio", "import io\ndef attack():\n    io.FileIO('$dir/esc3', 'w').write(b'x')\n    return True",
            expect="No such file|Read-only", host_check=_absent("esc3"), how="mount namespace"),
    Hostile("write_pathlib", "import pathlib\ndef attack():\n    pathlib.Path('$dir/esc4').write_text('x')\n"
            "    return True", expect="No such file|Read-only", host_check=_absent("esc4"), how="mount namespace"),
    Hostile("write_ctypes_libc_open", "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    fd = libc.open(b'$dir/esc5', 0o101, 0o644)\n    if fd < 0:\n"
            "        raise OSError(ctypes.get_errno(), 'open')\n    return True",
            expect=r"Errno (2|30)", host_check=_absent("esc5"), how="mount namespace (below libc)"),
    Hostile("write_working_tree", "def attack():\n    open('$repo/scalelab-escaped.txt', 'w').write('x')\n"
            "    return True", expect="No such file|Read-only", how="working tree not mounted",
            host_check=lambda a: _absent_path(REPO / "scalelab-escaped.txt")),
    Hostile("write_read_only_root", "def attack():\n    open('/usr/lib/esc6', 'w').write('x')\n    return True",
            expect="Read-only", host_check=lambda a: _absent_path(Path("/usr/lib/esc6")), how="read-only bind"),
    Hostile("delete_os_unlink", "import os\ndef attack():\n    os.unlink('$canary')\n    return True",
            expect="No such file", host_check=_canary_intact, how="mount namespace"),
    Hostile("delete_posix_unlink", "import posix\ndef attack():\n    posix.unlink('$canary')\n    return True",
            expect="No such file", host_check=_canary_intact, how="mount namespace"),
    Hostile("delete_shutil_rmtree", "import shutil\ndef attack():\n    shutil.rmtree('$dir/sub')\n    return True",
            expect="No such file", host_check=_canary_intact, how="mount namespace"),
    Hostile("rename_out", "import os\ndef attack():\n    os.rename('$canary', '/tmp/stolen')\n    return True",
            expect="No such file", host_check=_canary_intact, how="mount namespace"),
    Hostile("chmod_truncate_link", "import os\ndef attack():\n    os.chmod('$canary', 0o777)\n"
            "    os.truncate('$canary', 0)\n    os.link('$canary', '/tmp/hl')\n    return True",
            expect="No such file", host_check=_canary_intact, how="mount namespace"),
    Hostile("symlink_then_write", "import os\ndef attack():\n    os.symlink('$dir', '/tmp/l')\n"
            "    open('/tmp/l/esc7', 'w').write('x')\n    return True",
            expect="No such file", host_check=_absent("esc7"), how="symlink resolves inside the jail"),
    Hostile("mknod_block_device", "import os, stat\ndef attack():\n    os.mknod('/tmp/sda', 0o600 | stat.S_IFBLK, "
            "os.makedev(8, 0))\n    open('/tmp/sda', 'rb').read(512)\n    return True",
            expect="Operation not permitted|Permission denied", how="no capabilities; nodev"),
    Hostile("remount_root_rw", "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    if libc.mount(None, b'/', None, 32 | 1 << 5, None) != 0:\n"
            "        raise OSError(ctypes.get_errno(), 'mount')\n    return True",
            expect=r"Errno 1\b", how="seccomp (mount) + no capabilities"),
    Hostile("write_dev_shm", "def attack():\n    with open('/dev/shm/big', 'wb') as f:\n        for _ in range(100):\n"
            "            f.write(b'x' * 1024 ** 2)\n    return True", expect="Read-only",
            how="/dev remounted read-only (only /tmp is writable)"),
    Hostile("leave_file_in_tmp", "def attack():\n    open('/tmp/scalelab-leak-$token', 'w').write('x')\n"
            "    return True", tests=NEVER, expect="test 1 failed",
            host_check=lambda a: _absent_path(Path(f"/tmp/scalelab-leak-{a['token']}")),
            how="/tmp is the jail's own tmpfs"),
]


def _absent_path(path: Path) -> None:
    if path.exists():
        path.unlink()
        raise AssertionError(f"{path} was written from inside the jail")


READS = [
    Hostile("read_shadow", "def attack():\n    return len(open('/etc/shadow').read()) > 0",
            expect="No such file", how="/etc not mounted"),
    Hostile("read_secret_file", "def attack():\n    s = open('$secret_file').read()\n    print(s)\n    return s",
            tests=["assert attack() == 'SECRET-FILE-$token'"], expect="No such file", host_check=_secret_kept,
            how="mount namespace"),
    Hostile("read_other_users_file", "def attack():\n    s = open('$other_file').read()\n    print(s)\n    return s",
            tests=["assert attack() == 'SECRET-FILE-$token'"], expect="No such file", how="mount namespace"),
    Hostile("list_working_tree", "import os\ndef attack():\n    return sorted(os.listdir('$repo'))",
            tests=["assert 'scalelab' in attack()"], expect="No such file", how="mount namespace"),
    Hostile("read_proc_ppid_environ", "import os\ndef attack():\n    s = open(f'/proc/{os.getppid()}/environ').read()"
            "\n    print(s)\n    return s", tests=["assert '$secret' in attack()"], expect="No such file",
            how="no /proc; PID namespace"),
    Hostile("scan_all_proc_environ", "import os\ndef attack():\n    out = ''\n    for p in os.listdir('/proc'):\n"
            "        try:\n            out += open(f'/proc/{p}/environ').read()\n        except OSError:\n"
            "            pass\n    print(out)\n    return out", tests=["assert '$secret' in attack()"],
            expect="No such file", how="no /proc; PID namespace"),
    Hostile("own_environ", "import os\ndef attack():\n    print(dict(os.environ))\n    return repr(dict(os.environ))",
            tests=["assert '$secret' in attack()"], expect="test 1 failed", how="--clearenv"),
    Hostile("read_evaluator_memory", "import ctypes, os\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    buf = ctypes.create_string_buffer(8)\n"
            "    local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)\n"
            "    remote = (ctypes.c_void_p * 2)(0x400000, 8)\n"
            "    if libc.process_vm_readv($evaluator, local, 1, remote, 1, 0) < 0:\n"
            "        raise OSError(ctypes.get_errno(), 'process_vm_readv')\n    return True",
            expect=r"Errno (1|3)\b", how="seccomp + PID namespace"),
    Hostile("read_home_ssh", "import os\ndef attack():\n    return os.listdir('/root/.ssh') + os.listdir('/home')",
            expect="No such file", how="mount namespace"),
]

PROCESSES = [
    Hostile("os_system", "import os\ndef attack():\n    rc = os.system('touch $dir/spawn1')\n    if rc:\n"
            "        raise OSError(f'system: {rc}')\n    return True", expect="system", host_check=_absent("spawn1"),
            how="seccomp: no new process"),
    Hostile("subprocess_run", "import subprocess\ndef attack():\n    subprocess.run(['touch', '$dir/spawn2'], "
            "check=True)\n    return True", expect="Operation not permitted|No such file", host_check=_absent("spawn2"),
            how="seccomp: no new process"),
    Hostile("posix_system", "import posix\ndef attack():\n    rc = posix.system('touch $dir/spawn3')\n    if rc:\n"
            "        raise OSError(f'system: {rc}')\n    return True", expect="system", host_check=_absent("spawn3"),
            how="seccomp: no new process"),
    Hostile("ctypes_system", "import ctypes\ndef attack():\n    rc = ctypes.CDLL(None).system(b'touch $dir/spawn4')\n"
            "    if rc:\n        raise OSError(f'system: {rc}')\n    return True", expect="system",
            host_check=_absent("spawn4"), how="seccomp: no new process"),
    Hostile("fork_exec", "import os\ndef attack():\n    pid = os.fork()\n    if pid == 0:\n"
            "        os.execv('/bin/sh', ['sh', '-c', 'touch $dir/spawn5'])\n    os.waitpid(pid, 0)\n    return True",
            expect="Operation not permitted", host_check=_absent("spawn5"), how="seccomp: fork refused"),
    Hostile("posix_spawn", "import os\ndef attack():\n    os.posix_spawn('/bin/touch', ['touch', '$dir/spawn6'], {})\n"
            "    return True", expect="Operation not permitted|No such file", host_check=_absent("spawn6"),
            how="seccomp: no new process"),
    Hostile("exec_replace", "import os, sys\ndef attack():\n    os.execv(sys.executable, [sys.executable, '-c', "
            "\"open('$dir/spawn7', 'w')\"])", expect="Operation not permitted", host_check=_absent("spawn7"),
            how="seccomp: no exec after start"),
    Hostile("multiprocessing", "import multiprocessing\ndef attack():\n    p = multiprocessing.Process(target=print)\n"
            "    p.start()\n    p.join()\n    return True", expect="Error", how="seccomp: no new process"),
    Hostile("pty_fork", "import pty\ndef attack():\n    pid, fd = pty.fork()\n    return True",
            expect="Operation not permitted|OSError", how="seccomp: no new process"),
    Hostile("raw_syscall_fork", "import ctypes, platform\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    nr = {'x86_64': 57, 'aarch64': 220}[platform.machine()]\n    pid = libc.syscall(nr, 17, 0, 0, 0, 0)\n"
            "    if pid < 0:\n        raise OSError(ctypes.get_errno(), 'fork')\n    if pid == 0:\n"
            "        libc._exit(0)\n    return True", expect=r"Errno 1\b", how="seccomp: fork/clone refused"),
    Hostile("raw_syscall_clone3", "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    args = (ctypes.c_uint64 * 11)(0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)\n"
            "    pid = libc.syscall(435, args, 88)\n    if pid < 0:\n"
            "        raise OSError(ctypes.get_errno(), 'clone3')\n    if pid == 0:\n        libc._exit(0)\n"
            "    return True", expect=r"Errno 38\b", how="seccomp: clone3 ENOSYS"),
    Hostile("new_user_namespace", "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    if libc.unshare(0x10000000) != 0:\n        raise OSError(ctypes.get_errno(), 'unshare')\n"
            "    return True", expect=r"Errno 1\b", how="seccomp + --disable-userns"),
    Hostile("ptrace_init", "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    if libc.ptrace(16, 1, 0, 0) != 0:\n        raise OSError(ctypes.get_errno(), 'ptrace')\n"
            "    return True", expect=r"Errno 1\b", how="seccomp: ptrace refused"),
]

NETWORK = [
    Hostile("tcp_connect", "import socket\ndef attack():\n    s = socket.create_connection(('127.0.0.1', $tcp_port), "
            "timeout=1)\n    s.sendall(b'ping')\n    return s.recv(4) == b'pong'", expect="Connection refused",
            host_check=_no_connection("tcp"), how="network namespace (own loopback)"),
    Hostile("udp_send", "import socket\ndef attack():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    s.settimeout(1)\n    s.sendto(b'ping', ('127.0.0.1', $udp_port))\n    return s.recv(4) == b'pong'",
            expect="timed out|refused", host_check=_no_connection("udp"), how="network namespace"),
    Hostile("unix_socket", "import socket\ndef attack():\n    s = socket.socket(socket.AF_UNIX)\n"
            "    s.connect('$unix_path')\n    s.sendall(b'ping')\n    return s.recv(4) == b'pong'",
            expect="No such file", host_check=_no_connection("unix"), how="mount namespace"),
    Hostile("abstract_unix_socket", "import socket\ndef attack():\n    s = socket.socket(socket.AF_UNIX)\n"
            "    s.connect('\\0$abstract')\n    s.sendall(b'ping')\n    return s.recv(4) == b'pong'",
            expect="Connection refused", host_check=_no_connection("abstract"), how="network namespace"),
    Hostile("external_address", "import socket\ndef attack():\n    socket.create_connection(('1.1.1.1', 53), "
            "timeout=1)\n    return True", expect="unreachable|timed out", how="network namespace: no route"),
    Hostile("dns_lookup", "import socket\ndef attack():\n    return len(socket.getaddrinfo('example.com', 80)) > 0",
            expect="gaierror|Name or service|resolution", how="network namespace; no resolver"),
    Hostile("raw_packet_socket", "import socket\ndef attack():\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "    return True", expect="Operation not permitted", how="no capabilities"),
]

KILLS = [
    Hostile("kill_parent", "import os, signal\ndef attack():\n    os.kill(os.getppid(), signal.SIGKILL)\n"
            "    return True", tests=NEVER, how="PID namespace: the parent is the jail's init",
            host_check=_victim_alive),
    Hostile("kill_victim_pid", "import os, signal\ndef attack():\n    os.kill($victim, signal.SIGKILL)\n"
            "    return True", expect="No such process", host_check=_victim_alive, how="PID namespace"),
    Hostile("kill_evaluator_pid", "import os, signal\ndef attack():\n    os.kill($evaluator, signal.SIGKILL)\n"
            "    return True", expect="No such process", how="PID namespace"),
    Hostile("kill_every_process", "import os, signal\ndef attack():\n    os.kill(-1, signal.SIGKILL)\n"
            "    return True", tests=NEVER, host_check=_victim_alive, how="PID namespace"),
    Hostile("killpg_evaluator", "import os, signal\ndef attack():\n    os.killpg($evaluator_pgid, signal.SIGKILL)\n"
            "    return True", expect="No such process", host_check=_victim_alive, how="PID namespace"),
    Hostile("pidfd_victim", "import os, signal\ndef attack():\n    fd = os.pidfd_open($victim)\n"
            "    signal.pidfd_send_signal(fd, signal.SIGKILL)\n    return True", expect="No such process",
            host_check=_victim_alive, how="PID namespace"),
    Hostile("kill_jail_init", "import os, signal\nos.kill(1, signal.SIGKILL)\nos.kill(1, signal.SIGTERM)\n"
            "def attack():\n    return True", tests=NEVER, how="PID namespace",
            host_check=_victim_alive),
]

FORGERIES = [
    Hostile("forge_marker_from_co_consts", WRONG_ADD + "import sys, os\nf = sys._getframe(0)\nwhile f:\n"
            "    for c in f.f_code.co_consts:\n        print(c)\n    f = f.f_back\nos._exit(0)\n", tests=ADD_TESTS,
            expect="no value", how="no marker exists: the verdict is computed outside"),
    Hostile("forge_os_exit0", WRONG_ADD + "import os\nos._exit(0)\n", tests=ADD_TESTS, expect="no value",
            how="exit status ignored; values missing"),
    Hostile("forge_sys_exit0", WRONG_ADD + "import sys\nsys.exit(0)\n", tests=ADD_TESTS, expect="SystemExit",
            how="exit status ignored"),
    Hostile("forge_exit_inside_call", "import sys\ndef add(a, b):\n    sys.exit(0)\n", tests=ADD_TESTS,
            expect="SystemExit", how="a call that exits has no value"),
    Hostile("forge_result_channel", WRONG_ADD + "import os, json\nfor fd in range(3, 64):\n"
            "    for m in ({'done': True}, {'passed': True}, {'i': 0, 'v': True}, {'i': 0, 'v': True},\n"
            "              {'i': 1, 'v': True}):\n        try:\n"
            "            os.write(fd, (json.dumps(m) + '\\n').encode())\n        except OSError:\n            pass\n"
            "os._exit(0)\n", tests=ADD_TESTS, expect="duplicate|unknown|failed", how="judge rejects bad messages"),
    Hostile("forge_monkeypatch_runner", WRONG_ADD + "import __main__, json\n__main__.encode = lambda v: True\n"
            "json.dumps = lambda *a, **k: '{\"done\": true}'\n", tests=ADD_TESTS, expect="no value|failed",
            how="only plain values are trusted"),
    Hostile("forge_always_equal", "class Eq:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
            "def add(a, b):\n    return Eq()\n", tests=ADD_TESTS, expect="not plain data",
            how="values travel as plain data"),
    Hostile("forge_int_subclass", "class I(int):\n    def __eq__(self, other):\n        return True\n"
            "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n", tests=ADD_TESTS, expect="test 1 failed",
            how="subclasses reduced to their base type"),
    Hostile("forge_list_subclass", "class L(list):\n    def __eq__(self, other):\n        return True\n"
            "def pair(a):\n    return L()\n", tests=["assert pair(1) == [1, 1]"], expect="test 1 failed",
            how="subclasses reduced to their base type"),
    Hostile("forge_override_builtins", WRONG_ADD + "import builtins, math\nbuiltins.AssertionError = type('X', "
            "(Exception,), {})\nbuiltins.len = lambda *a: 2\n"
            "math.isclose = lambda *a, **k: True\n", tests=["assert math.isclose(add(0.1, 0.2), 0.3)",
                                                             "assert len([add(1, 1)]) == 2"],
            expect="test 1 failed", how="the judge's builtins are its own"),
    Hostile("forge_read_expected_answer", "import gc, json\ndef add(a, b):\n    found = [s for s in "
            "json.load(open('/run/scalelab/job.json'))['expressions']]\n    found += [o for o in gc.get_objects() "
            "if isinstance(o, str) and '==' in o]\n    print(found)\n    return 5\n", tests=ADD_TESTS,
            expect="test 2 failed", how="expected answers never enter the jail"),
    Hostile("forge_atexit", WRONG_ADD + "import atexit, os\natexit.register(lambda: os.write(1, b'passed\\n'))\n",
            tests=ADD_TESTS, expect="test 1 failed", how="stdout and exit hooks ignored"),
    Hostile("forge_raise_in_eq", "class Boom:\n    def __eq__(self, o):\n        raise AssertionError\n"
            "def add(a, b):\n    return Boom()\n", tests=ADD_TESTS, expect="not plain data",
            how="values travel as plain data"),
]

TIME = [
    Hostile("infinite_loop", "def attack():\n    while True:\n        pass", timeout_s=HANG_S, expect="timeout",
            how="wall-clock kill of the PID namespace"),
    Hostile("sleep_forever", "import time\ndef attack():\n    time.sleep(10 ** 6)", timeout_s=HANG_S, expect="timeout",
            how="wall-clock kill"),
    Hostile("signals_ignored", "import signal\nfor s in signal.valid_signals():\n    try:\n"
            "        signal.signal(s, signal.SIG_IGN)\n    except (OSError, ValueError, RuntimeError):\n"
            "        pass\ndef attack():\n    while True:\n        pass", timeout_s=HANG_S, expect="timeout",
            how="SIGKILL of the namespace"),
    Hostile("fork_setsid_hold_stdout", "import os, sys, time\ndef attack():\n    try:\n        if os.fork() == 0:\n"
            "            os.setsid()\n            time.sleep(60)\n    except OSError:\n        pass\n"
            "    import threading\n    threading.Thread(target=time.sleep, args=(60,)).start()\n    return True",
            timeout_s=HANG_S, expect="timeout", how="no fork; bounded reads; namespace killed"),
    Hostile("close_stdout_and_hang", "import os\nos.close(1)\nos.close(2)\ndef attack():\n    while True:\n"
            "        pass", timeout_s=HANG_S, expect="timeout", how="wall-clock kill"),
    Hostile("busy_threads", "import threading\ndef spin():\n    while True:\n        pass\n"
            "for _ in range(8):\n    threading.Thread(target=spin, daemon=True).start()\ndef attack():\n"
            "    spin()", timeout_s=HANG_S, expect="timeout", how="wall-clock kill"),
]

RESOURCES = [
    Hostile("fork_bomb", "import os\ndef attack():\n    while True:\n        os.fork()",
            expect="Operation not permitted", how="seccomp: no new process"),
    Hostile("thread_bomb", "import threading, time\ndef attack():\n    n = 0\n    while True:\n"
            "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1",
            expect="thread|Memory|timeout", timeout_s=3, how="RLIMIT_AS / RLIMIT_NPROC"),
    Hostile("memory_bomb", "def attack():\n    x = bytearray(8 * 1024 ** 3)\n    return True", expect="MemoryError",
            how="RLIMIT_AS"),
    Hostile("memory_bomb_children", "import os\ndef attack():\n    for _ in range(4):\n        if os.fork() == 0:\n"
            "            x = bytearray(400 * 1024 ** 2)\n    return True", expect="Operation not permitted",
            how="no children: one address space"),
    Hostile("memory_bomb_threads", "import threading\nheld = []\ndef grab():\n"
            "    held.append(bytearray(200 * 1024 ** 2))\n"
            "def attack():\n    ts = [threading.Thread(target=grab) for _ in range(4)]\n    [t.start() for t in ts]\n"
            "    [t.join() for t in ts]\n    return len(held) == 4", expect="test 1 failed",
            how="RLIMIT_AS covers every thread"),
    Hostile("memory_via_memfd", "import os\ndef attack():\n    fds = [os.memfd_create(f'm{i}') for i in range(40)]\n"
            "    for fd in fds:\n        os.write(fd, b'x' * (30 * 1024 ** 2))\n    return True",
            expect="Operation not permitted", how="seccomp: memfd_create (memory outside RLIMIT_AS)"),
    Hostile("memory_via_sysv_shm", "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    for _ in range(8):\n        if libc.shmget(0, 200 * 1024 ** 2, 0o1600) < 0:\n"
            "            raise OSError(ctypes.get_errno(), 'shmget')\n    return True", expect=r"Errno 1\b",
            how="seccomp: System V IPC"),
    Hostile("memory_via_tmpfs", "def attack():\n    with open('/tmp/big', 'wb') as f:\n        for _ in range(200):\n"
            "            f.write(b'x' * 1024 ** 2)\n    return True", expect="No space left|File too large",
            how="tmpfs size quota"),
    Hostile("disk_bomb_files", "def attack():\n    n = 0\n    try:\n        while True:\n"
            "            open(f'/tmp/f{n}', 'wb').write(b'x' * 1024 ** 2)\n            n += 1\n    except OSError:\n"
            "        pass\n    print(n)\n    return n", tests=["assert attack() >= 100"], expect="test 1 failed",
            how="tmpfs size quota"),
    Hostile("huge_stdout", "import sys\ndef attack():\n    chunk = 'x' * (1 << 20)\n    for _ in range(2000):\n"
            "        sys.stdout.write(chunk)\n    return True", tests=NEVER, timeout_s=3,
            expect="failed|timeout", how="bounded read of stdout"),
    Hostile("huge_stderr", "import os\ndef attack():\n    chunk = b'x' * (1 << 20)\n    for _ in range(2000):\n"
            "        os.write(2, chunk)\n    return True", tests=NEVER, timeout_s=3,
            expect="failed|timeout", how="bounded read of stderr"),
    Hostile("huge_value", "def attack():\n    return 'x' * (100 * 1024 ** 2)",
            expect="bytes of test values|MemoryError", how="cap on the result channel"),
    Hostile("deep_value", "def attack():\n    v = []\n    for _ in range(100000):\n        v = [v]\n    return v",
            expect="nested deeper", how="depth cap of the codec"),
    Hostile("recursion_bomb", "def attack():\n    return attack()", expect="RecursionError", how="interpreter"),
    Hostile("open_files_bomb", "def attack():\n    fs = [open('/dev/null') for _ in range(100000)]\n    return True",
            expect="Too many open files", how="RLIMIT_NOFILE"),
    Hostile("inode_bomb", "def attack():\n    n = 0\n    while True:\n        open(f'/tmp/{n}', 'w').close()\n"
            "        n += 1", timeout_s=HANG_S, expect="timeout",
            how="partly: no inode quota; bounded by the wall clock, freed with the jail's tmpfs"),
    Hostile("cpu_limit_signal_ignored", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
            "def attack():\n    while True:\n        pass", timeout_s=HANG_S, expect="timeout",
            how="wall clock (and RLIMIT_CPU)"),
]

HOSTILE = FILES + READS + PROCESSES + NETWORK + KILLS + FORGERIES + TIME + RESOURCES


@pytest.fixture(scope="module")
def arena(jail: None, tmp_path_factory: pytest.TempPathFactory):
    """Canary files, listeners, a victim process and a secret; then every hostile program, run in parallel."""
    base = tmp_path_factory.mktemp("arena")
    token = os.urandom(6).hex()
    (base / "sub").mkdir()
    (base / "sub" / "keep.txt").write_text("keep")
    canary = base / "canary.txt"
    canary.write_text("canary")
    canary.chmod(0o644)
    secret_file = base / "secret.txt"
    secret_file.write_text(f"SECRET-FILE-{token}")
    secret_file.chmod(0o600)
    other_file = base / "other.txt"
    other_file.write_text(f"SECRET-FILE-{token}")
    other_file.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(other_file, 4242, 4242)
    hits: dict[str, list] = {"tcp": [], "udp": [], "unix": [], "abstract": []}
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = str(base / "listener.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen()
    abstract_name = f"scalelab-test-{token}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    stop = threading.Event()

    def serve(name: str, sock: socket.socket) -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                if sock.type == socket.SOCK_DGRAM:
                    data, addr = sock.recvfrom(16)
                    hits[name].append(data)
                    sock.sendto(b"pong", addr)
                else:
                    conn, _ = sock.accept()
                    hits[name].append("connection")
                    conn.sendall(b"pong")
                    conn.close()
            except (TimeoutError, OSError):
                continue

    servers = [threading.Thread(target=serve, args=item, daemon=True)
               for item in (("tcp", tcp), ("udp", udp), ("unix", unix), ("abstract", abstract))]
    for t in servers:
        t.start()
    victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
    secret = f"sk-test-{token}"
    old_env = os.environ.get("SCALELAB_TEST_SECRET")
    os.environ["SCALELAB_TEST_SECRET"] = secret
    values = {"dir": str(base), "canary": str(canary), "secret_file": str(secret_file), "other_file": str(other_file),
              "repo": str(REPO), "tcp_port": tcp.getsockname()[1], "udp_port": udp.getsockname()[1],
              "unix_path": unix_path, "abstract": abstract_name, "victim": victim.pid, "evaluator": os.getpid(),
              "evaluator_pgid": os.getpgid(0), "secret": secret, "token": token}

    def run(h: Hostile):
        code = Template(h.code).safe_substitute(values)
        tests = [Template(t).safe_substitute(values) for t in h.tests]
        t0 = time.monotonic()
        res = run_tests(code, tests, timeout_s=h.timeout_s)
        return res, time.monotonic() - t0

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(zip([h.kind for h in HOSTILE], pool.map(run, HOSTILE)))
        time.sleep(0.2)    # let the listeners notice anything late
        yield {"dir": base, "canary": canary, "hits": hits, "victim": victim, "secret": secret, "token": token,
               "results": results, "values": values}
    finally:
        stop.set()
        for t in servers:
            t.join(timeout=2)
        for s in (tcp, udp, unix, abstract):
            s.close()
        victim.kill()
        victim.wait()
        if old_env is None:
            os.environ.pop("SCALELAB_TEST_SECRET", None)
        else:
            os.environ["SCALELAB_TEST_SECRET"] = old_env


def test_at_least_44_kinds_of_hostile_program() -> None:
    assert len({h.kind for h in HOSTILE}) == len(HOSTILE) >= 44


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.kind for h in HOSTILE])
def test_hostile_program_is_contained(hostile: Hostile, arena: dict) -> None:
    res, seconds = arena["results"][hostile.kind]
    assert not res.passed, f"{hostile.kind} passed: {res}"
    assert res.jailed
    if hostile.expect:
        assert re.search(hostile.expect, res.reason, re.IGNORECASE), f"{hostile.kind}: stopped by {res.reason!r}"
    assert seconds < hostile.timeout_s + sandbox.KILL_GRACE_S + 3, f"{hostile.kind} took {seconds:.1f} s"
    assert len(res.stdout) <= sandbox.OUTPUT_CAP and len(res.stderr) <= sandbox.OUTPUT_CAP
    assert arena["secret"] not in res.stdout + res.stderr
    assert arena["victim"].poll() is None
    if hostile.host_check:
        hostile.host_check(arena)
    _canary_intact(arena)


# ----------------------------------------------------------------------------------------------- honest programs

HONEST = [
    ("correct_function", "def add(a, b):\n    return a + b\n", ADD_TESTS, True),
    ("wrong_function", WRONG_ADD, ADD_TESTS, False),
    ("program_raises", "raise ValueError('boom')\ndef add(a, b):\n    return a + b\n", ADD_TESTS, False),
    ("syntax_error", "def add(a, b) return a + b\n", ADD_TESTS, False),
    ("missing_function", "def plus(a, b):\n    return a + b\n", ADD_TESTS, False),
    ("one_of_two_wrong", "def add(a, b):\n    return 5\n", ADD_TESTS, False),
    ("stdlib_imports", "import re, heapq, collections, itertools, functools, math, bisect, datetime, decimal, "
     "fractions, string, random, statistics, operator, copy, json, hashlib, array, cmath, time, sys\n"
     "def f(s):\n    return sorted(collections.Counter(re.findall('[a-z]', s)).items())\n",
     ["assert f('abca') == [('a', 2), ('b', 1), ('c', 1)]"], True),
    ("threads_work", "import threading\ndef f(n):\n    out = []\n"
     "    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(n)]\n"
     "    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return sorted(out)\n",
     ["assert f(4) == [0, 1, 2, 3]"], True),
    ("tmp_is_writable", "def f():\n    open('/tmp/x.txt', 'w').write('ok')\n    return open('x.txt').read()\n",
     ["assert f() == 'ok'"], True),
    ("float_isclose_and_generators", "def f(x):\n    return x / 3\ndef g(n):\n    return (i * i for i in range(n))\n",
     ["assert math.isclose(f(1), 0.3333333, rel_tol=1e-6)", "assert list(g(3)) == [0, 1, 4]",
      "assert g(3) != [0, 1, 4]"], True),
    ("shadowed_builtin", "def sum(a, b):\n    return a * b\n", ["assert sum(3, 4) == 12"], True),
    ("prints_a_lot", "def f():\n    print('y' * 200000)\n    return 1\n", ["assert f() == 1"], True),
    ("plain_data_types", "import collections\ndef f():\n    return ({1, 2}, frozenset([3]), {'a': (1, 2.5)}, "
     "collections.Counter('aab'), b'x', 2 ** 100, None, True)\n",
     ["assert f() == ({1, 2}, frozenset([3]), {'a': (1, 2.5)}, {'a': 2, 'b': 1}, b'x', 2 ** 100, None, True)"], True),
    ("setup_after_program", "class Node:\n    def __init__(self, v):\n        self.v = v\n        self.left = None\n"
     "def depth(n):\n    return 0 if n is None else 1 + depth(n.left)\n", ["assert depth(root) == 2"], True),
]


@pytest.mark.parametrize("name,code,tests,expected", HONEST, ids=[h[0] for h in HONEST])
def test_honest_programs_are_judged_right(name: str, code: str, tests: list[str], expected: bool, jail: None) -> None:
    setup = "root = Node(1)\nroot.left = Node(2)\n" if name == "setup_after_program" else ""
    res = run_tests(code, tests, setup=setup, timeout_s=10)
    assert res.passed is expected, res
    assert res.tests_total == len(tests)


def test_run_python_judges_the_trailing_asserts(jail: None) -> None:
    assert run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n").passed
    res = run_python("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n")
    assert not res.passed and res.error.startswith("test 1 failed")
    assert not run_python("x = 1\n").passed    # nothing to judge is not a pass


def test_plan_keeps_the_expected_answer_outside() -> None:
    conds, holes = plan_tests(["assert f(1, [2]) == (3, 'secret-answer')",
                               "assert math.isclose(g(x), 0.5, rel_tol=1e-3)", "assert sorted(h()) == [1]"])
    assert holes == ["f(1, [2])", "g(x)", "h()"]
    assert "secret-answer" in ast.unparse(conds[0]) and not any("secret" in h for h in holes)
    _, holes = plan_tests(["assert len(f()) == 2"], program_names={"len"})
    assert holes == ["len(f())"]     # the program's own len
    assert sandbox.module_names("import math, numpy as np\nfrom os import sep as len\ndef f():\n    x = 1\n") == \
        {"np", "len", "f"}           # a plain ``import math`` leaves the judge its own math
    with pytest.raises(ValueError, match="assert"):
        plan_tests(["print(1)"])


def test_codec_round_trip_and_refusals() -> None:
    import collections
    import json

    for v in (1, -2 ** 80, 1.5, float("inf"), "s", b"b", (1, [2, {3}]), {"k": frozenset([1])}, None, True,
              collections.Counter("ab"), range(3), complex(1, 2)):
        assert decode(json.loads(json.dumps(encode(v)))) == v
    for bad in (object(), lambda: 0, _nest(MAX_DEPTH + 5)):
        with pytest.raises(TypeError):
            encode(bad)
    with pytest.raises(ValueError):
        decode({"x": 1})
    assert len(seccomp_filter(deny_exec=True)) % 8 == 0


def _nest(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def test_no_jail_refuses_unless_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "jail_status", lambda: JailStatus(False, "no bwrap (test)"))
    with pytest.raises(SandboxUnavailable, match="no bwrap"):
        run_tests("def add(a, b):\n    return a + b\n", ADD_TESTS)
    ok = run_tests("def add(a, b):\n    return a + b\n", ADD_TESTS, unsafe=True)
    assert ok.passed and not ok.jailed
    assert not run_tests(WRONG_ADD, ADD_TESTS, unsafe=True).passed
    # without the jail the runner's own seccomp filter still refuses new processes
    forked = run_tests("import os\ndef f():\n    os.fork()\n    return 1\n", ["assert f() == 1"], unsafe=True)
    assert not forked.passed and "Operation not permitted" in forked.error


def test_wall_clock_bounds_a_silent_hang(jail: None) -> None:
    t0 = time.monotonic()
    res = run_tests("import time\ntime.sleep(100)\n", ["assert 1 == 1"], timeout_s=1)
    assert res.timed_out and not res.passed and time.monotonic() - t0 < 1 + sandbox.KILL_GRACE_S + 2


# ----------------------------------------------------------------------------------------------- scalelab eval


def _tiny_run(root: Path):
    import dataclasses

    import torch

    from scalelab.lm.checkpoint import save_checkpoint
    from scalelab.lm.data.tokenizer import save_tokenizer, train_tokenizer
    from scalelab.lm.model import GPT, ModelConfig
    from scalelab.runs import RunDir

    tok = train_tokenizer(["def add(a, b):\n    return a + b\nassert add(1, 2) == 3\n"] * 50, vocab_size=300)
    run = RunDir(root)
    save_tokenizer(tok, run.tokenizer_dir)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32, n_head=1, n_kv_head=1, max_seq_len=64)
    torch.manual_seed(0)
    save_checkpoint(run, "base", 1, GPT(cfg), {"model_config": dataclasses.asdict(cfg)})
    return run


@needs_sets("mbpp")
def test_eval_without_a_jail_skips_mbpp_unless_unsafe_exec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    import json

    from scalelab.cli.evaluate import main

    run = _tiny_run(tmp_path / "run")
    args = ["--run", str(run.root), "--stage", "base", "--tasks", "mbpp", "arithmetic", "--limit", "2",
            "--max-tokens", "8", "--device", "cpu", "--mc", "off"]
    monkeypatch.setattr(sandbox, "jail_status", lambda: JailStatus(False, "bwrap not installed (test)"))
    assert main(args) == 0
    out = capsys.readouterr().out
    refusal = [line for line in out.splitlines() if line.startswith("mbpp not run")]
    assert len(refusal) == 1 and "--unsafe-exec" in refusal[0] and "bwrap not installed" in refusal[0]
    res = json.loads(run.eval_json("base").read_text())
    assert "mbpp" not in res["tasks"] and "arithmetic" in res["tasks"]
    assert "--unsafe-exec" in res["skipped_tasks"]["mbpp"] and re.search(r"^mbpp +skipped", out, re.M)
    assert main([*args, "--unsafe-exec"]) == 0
    assert "warning: --unsafe-exec" in capsys.readouterr().out
    res = json.loads(run.eval_json("base").read_text())
    assert res["tasks"]["mbpp"]["n"] == 2 and "skipped_tasks" not in res
