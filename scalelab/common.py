"""Shared plumbing: user errors, devices and dtypes, seeding, distributed init, rank-0 output, atomic files, progress.

Nothing here runs on import. Every rank may call every function; only rank 0 prints and writes (see ``print0``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class UsageError(Exception):
    """Bad input from the user: the CLI prints it on one line and exits with code 2 (no traceback)."""


# ----------------------------------------------------------------------------------------------- distributed / ranks

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank info from torchrun's environment variables (single process when absent)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def init_distributed(device: str) -> DistInfo:
    """Initialise torch.distributed under torchrun (gloo on CPU, NCCL on CUDA); no-op for one process."""
    import torch
    import torch.distributed as dist

    info = dist_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return dist_info().is_main


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def progress(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm bar on rank 0 (and disabled elsewhere or when SCALELAB_NO_PROGRESS=1)."""
    from tqdm.auto import tqdm

    disable = not is_main_process() or os.environ.get("SCALELAB_NO_PROGRESS") == "1"
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=disable, **kwargs)


# ----------------------------------------------------------------------------------------------- devices and dtypes

def resolve_device(name: str = "auto") -> str:
    """'auto' picks CUDA, then MPS, then CPU. An unavailable explicit choice is a UsageError."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' requested but CUDA is not available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device 'mps' requested but MPS is not available (use --device cpu or auto)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"unknown device '{name}' (choose auto, cpu, cuda, cuda:N or mps)")
    return name


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast is a real speed-up."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: str) -> str:
    """'auto' -> bf16 where the device does it fast (CUDA with bf16, CPU with AMX/AVX512-BF16), else fp32."""
    import torch

    name = (name or "auto").lower()
    if name in ("fp32", "float32"):
        return "fp32"
    if name in ("bf16", "bfloat16"):
        return "bf16"
    if name in ("fp16", "float16"):
        return "fp16"
    if name != "auto":
        raise UsageError(f"unknown dtype '{name}' (choose auto, fp32, bf16 or fp16)")
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- files

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        usual_mode(Path(tmp))  # mkstemp makes 0600
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def claim_output_dir(path: str | Path, own: tuple[str, ...]) -> Path:
    """The output folder of a command, created if missing; refused (nothing overwritten) when it is a file, or a
    non-empty folder holding none of the command's own files ``own`` (another command's output, or the user's)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is a file; --out names a folder (nothing was overwritten)")
    if path.is_dir() and any(path.iterdir()) and not any((path / name).exists() for name in own):
        raise UsageError(f"{path}: exists and holds other files (none of {', '.join(own)}); choose another --out "
                         "(nothing was overwritten)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def usual_mode(path: Path) -> None:
    """Give a file or folder that mkstemp, mkdtemp or safetensors made owner-only the permissions the umask allows,
    so another user (an Ollama service, a shared group) can read weights and exports."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX only; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file below ``path``, then every folder bottom-up, before a rename publishes it."""
    for dirpath, _dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


MiB = 1024**2


@contextlib.contextmanager
def space_for(where: Path, what: str, needed: int = 0) -> Iterator[None]:
    """Turn a write that failed for lack of space into one UsageError naming the folder, the free space and what
    was needed. torch.save reports a full disk as a RuntimeError about file positions, so a failed write with less
    free space than ``needed`` counts too."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            raise e from None
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        if not full and not (isinstance(e, RuntimeError) and needed and free < needed):
            raise
        need = f"about {needed / MiB:,.1f} MiB needed, " if needed else ""
        raise UsageError(f"{where}: no space left on the device to write {what} ({need}{free / MiB:,.1f} MiB "
                         "free); free some space and rerun the same command") from None


class RunLock:
    """An exclusive lock on a run folder for as long as a writer runs, so two runs never write one folder.

    ``fcntl.flock`` on ``<run>/.lock``: the kernel drops it when the process dies, so a killed run never leaves a
    stale lock. The holder's pid is written in the file for the refusal message."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"{self.path.parent}: another scalelab process (pid {holder}) is writing this run; wait "
                             "for it to finish or use another --run") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            out.append(json.loads(line))
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------------------------- signals

class StopFlag:
    """First SIGINT/SIGTERM asks the loop to save and stop at the next step boundary; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, the loop still runs
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def dist_sum(t: Any, enabled: bool) -> Any:
    """``t`` summed over all processes in place (a no-op without torch.distributed)."""
    if enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def broadcast_int(value: int, device: str, enabled: bool) -> int:
    """Rank 0's ``value`` on every rank (a no-op without torch.distributed)."""
    if not enabled:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor(value, dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def omp_threads() -> int:
    """$OMP_NUM_THREADS as a count (0 when unset or unreadable): a user who set it is sharing the cores, and more
    threads than cores left makes every OpenMP barrier wait on a descheduled thread."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0]))
    except ValueError:
        return 0


def setup_backend(device: str, world: int, num_threads: int = 0) -> None:
    """Threads and numerics for training: CPU threads ($OMP_NUM_THREADS, else the cores shared among the local
    processes), denormals flushed (peaked softmax gradients are denormal-heavy and slow without it); TF32 matmuls
    on CUDA."""
    import torch

    if device == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(num_threads or omp_threads() or max(1, cores // max(1, local)))
        torch.set_flush_denormal(True)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
