"""scalelab's CPU decoding kernels (cpu_kernels.c beside this file), compiled on first use; torch's paths otherwise.

    from scalelab.lm.inference import cpu_kernels
    if cpu_kernels.available():
        wp = cpu_kernels.pack(w)                          # w (K, N) fp32 -> column panels, once per weight
        y = cpu_kernels.linear(x, wp, N, residual=r)      # x (M, K) -> (M, N) = x @ w + r
        y = cpu_kernels.attention(q, k, v, k_cache, v_cache, positions, scale, rows)  # new tokens over the cache
        ids = cpu_kernels.sample(logits, inv_temps, thresholds, top_ps, uniforms)      # one draw per row

Why not torch: a decode step multiplies 1-8 rows by each weight matrix, and torch's fastest CPU path for that
(oneDNN's packed linear) pays a fixed cost per call that outweighs the arithmetic at that size. The attention
kernel writes the new keys/values and attends each token to its own row's prefix in one call, so decode tokens of
rows at different lengths need no mask and a prompt's tokens are causal; the sampling kernel replaces torch's
softmax + cumsum + searchsorted. bench_generate measures the gain against torch's paths.

The C file is compiled with the system C compiler (``$CC``, else ``cc`` or ``gcc``; ``-O3 -march=native
-fopenmp``) into ``$SCALELAB_KERNEL_CACHE`` (default ``~/.cache/scalelab/kernels``, created 0700), under a name keyed
by the source, the compiler and the CPU, so it builds once per machine. The library is loaded into the process, so
the cache is used only when this user owns it and nobody else can write to it (folder and file); otherwise, as when
home cannot be written, it is built in a fresh private temp folder, removed once loaded.
``SCALELAB_KERNEL_ARCH`` replaces ``native`` (``x86-64-v3``: AVX2 vectors; ``x86-64``: SSE2; the tests build those
too). Without a compiler, or with ``SCALELAB_CPU_KERNELS=0``, ``available()`` is False and callers keep torch's paths;
``why_unavailable()`` says why. Tests: tests/test_cpu_kernels.py (against torch matmul, SDPA and softmax draws).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib" (ctypes.CDLL | None), "why" (str), "panel" (int)


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    return cc if cc and shutil.which(cc) else shutil.which("cc") or shutil.which("gcc")


def private(path: Path) -> bool:
    """Whether ``path`` (a folder or file, not a link) is owned by this user and writable by nobody else, so no
    other local user can have planted or can swap what it holds."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
    return not stat.S_ISLNK(st.st_mode) and st.st_uid == uid and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cache_dir() -> Path | None:
    """``$SCALELAB_KERNEL_CACHE``, else ~/.cache/scalelab/kernels (created 0700), when private and writable; else
    None (then the build goes to a fresh private temp folder)."""
    chosen = os.environ.get("SCALELAB_KERNEL_CACHE")
    path = Path(chosen) if chosen else Path.home() / ".cache" / "scalelab" / "kernels"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return path if private(path) and os.access(path, os.W_OK) else None


def _build() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("SCALELAB_CPU_KERNELS", "1") == "0":
        return None, "turned off by SCALELAB_CPU_KERNELS=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC)"
    arch = os.environ.get("SCALELAB_KERNEL_ARCH", "native")  # e.g. x86-64-v3 for AVX2, x86-64 for SSE2 only
    flags = ["-O3", f"-march={arch}", "-fopenmp", "-shared", "-fPIC"]
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{cc} --version failed: {e}"
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, *flags, _cpu_identity()]).encode())
    name = f"cpu_kernels-{key.hexdigest()[:16]}.so"
    cache = cache_dir()
    if cache is None or (os.path.lexists(cache / name) and not private(cache / name)):
        cache = Path(tempfile.mkdtemp(prefix="scalelab-kernels-"))  # new, 0700, ours: nothing planted there
        scratch = cache
    else:
        scratch = None
    try:
        return _build_into(cc, flags, cache / name)
    finally:
        if scratch is not None:  # the loaded library stays mapped; the file is not needed again
            shutil.rmtree(scratch, ignore_errors=True)


def _build_into(cc: str, flags: list[str], lib_path: Path) -> tuple[ctypes.CDLL | None, str]:
    cache = lib_path.parent
    if not lib_path.exists():
        try:
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(fd)
            done = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                os.unlink(tmp)
                return None, f"compiling {SOURCE.name} failed: {done.stderr.strip()[-400:]}"
            os.replace(tmp, lib_path)  # atomic: a concurrent builder's copy is as good
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"could not build {SOURCE.name} into {cache}: {e}"
    try:
        torch.get_num_threads()  # torch's libgomp is loaded before ours, so the kernels use torch's thread team
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:
        return None, f"could not load {lib_path}: {e}"
    ptr, long_ = ctypes.c_void_p, ctypes.c_long
    lib.sl_linear.argtypes = [ptr, ptr, ptr, ptr, long_, long_, long_, ctypes.c_int]
    lib.sl_linear.restype = None
    lib.sl_pack.argtypes = [ptr, ptr, long_, long_]
    lib.sl_pack.restype = None
    lib.sl_attention.argtypes = [ptr, long_, ptr, long_, ptr, long_, ptr, ptr, ptr, ptr, long_, long_, long_, long_,
                                 long_, long_, ctypes.c_float, ptr, ptr, ctypes.c_int]
    lib.sl_attention.restype = ctypes.c_int
    lib.sl_sample.argtypes = [ptr, long_, long_, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
    lib.sl_sample.restype = None
    return lib, ""


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                lib, why = _build()
                _state["why"] = why
                _state["panel"] = lib.sl_panel_width() if lib is not None else 0
                _state["lib"] = lib
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """True when the kernels are built and loaded (builds them on the first call), unless inside ``disabled()``."""
    return not _state.get("off") and _lib() is not None


@contextmanager
def disabled() -> Iterator[None]:
    """Inside the block ``available()`` is False, so decoders built there keep torch's paths (tests compare the
    two; not thread-safe)."""
    before = _state.get("off", False)
    _state["off"] = True
    try:
        yield
    finally:
        _state["off"] = before


def why_unavailable() -> str:
    """Empty when available; otherwise the reason (no compiler, a failed build, turned off)."""
    _lib()
    return "turned off by cpu_kernels.disabled()" if _state.get("off") else str(_state["why"])


def pack(w: torch.Tensor) -> torch.Tensor:
    """W (K, N) fp32 on CPU -> its panels (ceil(N / P), K, P), zero padded (``linear`` takes N again)."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"scalelab CPU kernels unavailable: {why_unavailable()}")
    if w.dtype != torch.float32 or w.device.type != "cpu" or w.dim() != 2:
        raise ValueError(f"pack wants a 2-D fp32 CPU tensor, got {tuple(w.shape)} {w.dtype} on {w.device}")
    w = w.detach().contiguous()
    K, N = w.shape
    P = int(_state["panel"])  # type: ignore[arg-type]
    wp = torch.empty(((N + P - 1) // P, K, P), dtype=torch.float32)
    lib.sl_pack(w.data_ptr(), wp.data_ptr(), K, N)
    return wp


def linear(x: torch.Tensor, wp: torch.Tensor, n: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ W (K, ``n``) (+ ``residual`` (M, n)) with W packed by ``pack``; fp32, CPU, contiguous inputs."""
    M, K = x.shape
    if K != wp.shape[1] or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"linear wants contiguous fp32 (M, {wp.shape[1]}) rows, got {tuple(x.shape)} {x.dtype}")
    if residual is not None and (residual.shape != (M, n) or residual.dtype != torch.float32
                                 or not residual.is_contiguous()):
        raise ValueError(f"residual must be contiguous ({M}, {n}), got {tuple(residual.shape)}")
    y = torch.empty((M, n), dtype=torch.float32)
    _state["lib"].sl_linear(x.data_ptr(), wp.data_ptr(), None if residual is None else residual.data_ptr(),  # type: ignore[union-attr]
                            y.data_ptr(), M, K, n, torch.get_num_threads())
    return y


def attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, positions: torch.Tensor, scale: float, rows: torch.Tensor | None = None,
              ) -> torch.Tensor:
    """Attention of N new tokens over the KV cache, their own keys/values written first: token i's key and value
    go into cache row ``rows[i]`` (default: row i) at ``positions[i]``, then its query attends to that row's
    positions 0..positions[i]. So a decode step (one token per row, rows at different lengths: no mask), a prompt
    (consecutive positions of one row: causal) or both at once are one call.

    q (N, H, hd), k_new / v_new (N, Hkv, hd): fp32, each token's heads contiguous (tokens may be strided); caches
    (R, Hkv, T, hd) fp32 contiguous; positions and rows (N,) int64. Returns (N, H * hd). Needs a head size that
    ``attention_supported`` accepts.
    """
    N, H, hd = q.shape
    R, Hkv, T = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    q, k_new, v_new = (x if x.stride(1) == hd and x.stride(2) == 1 else x.contiguous() for x in (q, k_new, v_new))
    tensors = (q, k_new, v_new, k_cache, v_cache)
    if (any(t.dtype != torch.float32 for t in tensors) or not (k_cache.is_contiguous() and v_cache.is_contiguous())
            or positions.dtype != torch.int64 or positions.shape != (N,) or (rows is None and N > R)
            or (rows is not None and (rows.dtype != torch.int64 or rows.shape != (N,)))
            or k_new.shape != (N, Hkv, hd) or v_new.shape != (N, Hkv, hd) or H % Hkv
            or not attention_supported(hd)):
        raise ValueError("attention wants fp32 q (N, H, hd), k/v (N, Hkv, hd) with hd a multiple of the vector "
                         "width, contiguous caches (with at least N rows when rows is None) and int64 positions "
                         f"and rows (N,), got q {tuple(q.shape)}, k {tuple(k_new.shape)}, cache "
                         f"{tuple(k_cache.shape)}, positions {tuple(positions.shape)} {positions.dtype}")
    threads = torch.get_num_threads()
    out = torch.empty((N, H * hd), dtype=torch.float32)
    scratch = torch.empty(threads * T, dtype=torch.float32)
    bad = _state["lib"].sl_attention(  # type: ignore[union-attr]
        q.data_ptr(), q.stride(0), k_new.data_ptr(), k_new.stride(0), v_new.data_ptr(), v_new.stride(0),
        k_cache.data_ptr(), v_cache.data_ptr(), None if rows is None else rows.data_ptr(), positions.data_ptr(),
        N, R, H, Hkv, hd, T, scale, out.data_ptr(), scratch.data_ptr(), threads)
    if bad:
        where = "" if rows is None else f" and rows {rows.tolist()} within 0..{R - 1}"
        raise ValueError(f"attention: positions {positions.tolist()} must lie within the cache (0..{T - 1}){where}")
    return out


def attention_supported(head_dim: int) -> bool:
    """Whether ``attention`` takes this head size (a multiple of the vector width)."""
    return available() and head_dim % (int(_state["panel"]) // 2) == 0  # type: ignore[arg-type]


def sample(logits: torch.Tensor, inv_temps: list[float], thresholds: list[float], top_ps: list[float],
           uniforms: list[float]) -> list[int]:
    """One draw per row of ``logits`` (n, V) fp32: softmax(x * inv_temps[r]) over entries >= thresholds[r] (a
    top-k threshold, -inf for none), cut to the top_ps[r] nucleus (1 for none), inverted at ``uniforms[r]`` in
    vocabulary order (see sl_sample)."""
    n, V = logits.shape
    logits = logits.contiguous()
    params = torch.tensor([inv_temps, thresholds, top_ps, uniforms], dtype=torch.float32)
    out = torch.empty(n, dtype=torch.int64)
    scratch = torch.empty(2 * n * V, dtype=torch.float32)
    _state["lib"].sl_sample(logits.data_ptr(), n, V, params[0].data_ptr(), params[1].data_ptr(),  # type: ignore[union-attr]
                            params[2].data_ptr(), params[3].data_ptr(), out.data_ptr(), scratch.data_ptr(),
                            torch.get_num_threads())
    return out.tolist()
