"""Ahead-of-time Triton compiles for a GPU we do not have: capture real launches, compile, inspect.

How the compile tests and ``tools/compile_matrix.py`` prove, on a CPU machine, that a kernel
runs on tensor cores and fits a GPU:

1. :func:`capture_launches` runs a Python call (e.g. ``na2d(q, k, v, ...)`` with
   ``VITZOO_KERNELS=triton``) with Triton's launch path replaced by a recorder. Nothing executes:
   every ``kernel[grid](...)`` (through ``@triton.autotune`` / ``@triton.heuristics`` too) is
   recorded with the exact positional arguments and meta-parameters that launcher passed. An
   autotuned kernel is recorded once per config, so every config gets compiled.
   Must run in a process where ``TRITON_INTERPRET`` is unset (the kernels must be real
   ``JITFunction`` objects); CPU tensors reach the Triton path because the recorder also makes
   the dispatch rule treat CPU tensors as launchable. ``VITZOO_KERNEL_TARGET`` (read by
   ``kernels/_launch_config.py`` at every launch) makes the launchers pick the tile table of the
   target being compiled for, not the host's.
2. :func:`compile_launch` compiles one recorded launch for ``GPUTarget("cuda", arch, 32)`` with
   the same binder Triton uses at launch time (same specialisation: dtypes, divisibility,
   constexprs), and reads registers and spill bytes from the log of the ``ptxas`` that Triton
   itself chose for that target (:func:`ptxas_for`: Triton >= 3.9 ships ``ptxas`` and
   ``ptxas-blackwell``), shared memory from Triton's metadata, and tensor-core instructions from
   the PTX.

Model-level capture (``tools/compile_matrix.py``) lives in ``tests/model_launches.py``.
Use from a child process: Triton caches the interpreter flag at import.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import os
import re
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

__all__ = ["Launch", "CompileReport", "capture_launches", "compile_launch", "tensor_core_ops",
           "ptxas_for", "target_accepted", "spec_key", "SMEM_LIMIT", "unique_launches"]

#: opt-in shared memory per block in bytes (CUDA programming guide, compute capabilities): what a
#: kernel's ``metadata.shared`` must stay within. Kept here, not read from the kernels' own
#: tables, so the check is independent of the code it checks.
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


@dataclasses.dataclass
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)`` call (meta-parameters included)."""

    fn: Any                    # triton.runtime.jit.JITFunction
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]

    @property
    def name(self) -> str:
        return self.fn.__name__

    def key(self) -> Tuple:
        """What makes two launches compile to different binaries (dtypes + meta-parameters);
        :func:`spec_key` adds divisibility and the target."""
        sig = tuple(str(getattr(a, "dtype", type(a).__name__)) for a in self.args)
        meta = tuple(sorted((k, repr(v)) for k, v in self.kwargs.items()))
        return (self.name, sig, meta)

    def constexprs(self) -> Dict[str, Any]:
        """The meta-parameters passed by keyword (constexprs, num_warps, num_stages)."""
        return {k: v for k, v in self.kwargs.items() if k not in ("grid", "warmup")}


@dataclasses.dataclass
class CompileReport:
    name: str
    arch: int
    ptx: str
    registers: int
    spill_bytes: int           # spill stores + spill loads reported by ptxas
    local_bytes: int           # stack frame (local memory) reported by ptxas
    meta: Dict[str, Any]
    shared: int = 0            # dynamic shared memory per block (Triton's metadata), bytes
    ptxas: str = ""            # path of the assembler Triton used
    ptxas_version: str = ""
    seconds: float = 0.0
    device: Optional[Dict[str, int]] = None   # n_regs / n_spills / shared from the CUDA driver


    @property
    def tensor_core_ops(self) -> List[str]:
        return tensor_core_ops(self.ptx)


_TC_PATTERN = re.compile(r"\b(wgmma\.mma_async[\w.:]*|tcgen05\.mma[\w.:]*|mma\.sync[\w.]*)")


def tensor_core_ops(ptx: str) -> List[str]:
    """Distinct tensor-core instructions in PTX: ``wgmma.mma_async`` (sm_90), ``tcgen05.mma``
    (sm_100), ``mma.sync`` (sm_80+)."""
    return sorted(set(_TC_PATTERN.findall(ptx)))


# ----------------------------------------------------------------------------------------------
# The assembler Triton uses for a target
# ----------------------------------------------------------------------------------------------
def _version_of(text: str) -> str:
    found = re.search(r"release (\d+\.\d+)", text) or re.search(r"(\d+\.\d+)", text)
    return found.group(1) if found else text.strip()


@functools.lru_cache(maxsize=None)
def ptxas_for(arch: int) -> Tuple[str, str]:
    """``(path, version)`` of the ``ptxas`` Triton itself runs for ``sm_<arch>``.

    Asks the installed Triton's NVIDIA backend, newest API first: ``get_ptxas(arch)`` (Triton
    3.5+; 3.9 picks ``ptxas-blackwell`` for the newer PTX it emits), ``get_ptxas()``, then
    ``_path_to_binary("ptxas")`` (Triton 3.0-3.4). Never a hard-coded path.
    """
    from triton.backends.nvidia import compiler as nv

    getter = getattr(nv, "get_ptxas", None)
    if getter is not None:
        takes_arch = len(inspect.signature(getter).parameters) >= 1
        tool = getter(arch) if takes_arch else getter()
        path, version = tool.path, str(tool.version)
    elif hasattr(nv, "_path_to_binary"):
        path, version = nv._path_to_binary("ptxas")
    else:  # pragma: no cover - a Triton this file does not know
        raise RuntimeError("cannot find which ptxas this Triton uses (no get_ptxas or "
                           "_path_to_binary in triton.backends.nvidia.compiler)")
    return str(path), _version_of(str(version))


def _sm_name(arch: int) -> str:
    from triton.backends.nvidia import compiler as nv
    fn = getattr(nv, "sm_arch_from_capability", None)
    return fn(arch) if fn is not None else (f"sm_{arch}a" if arch >= 90 else f"sm_{arch}")


def _ptx_version(ptxas_version: str) -> str:
    """The newest PTX ISA this ptxas reads (Triton's own rule when it has one)."""
    from triton.backends.nvidia import compiler as nv
    fn = getattr(nv, "ptx_get_version", None)
    if fn is not None:
        v = fn(ptxas_version)
        return f"{v // 10}.{v % 10}"
    major, minor = (int(x) for x in ptxas_version.split(".")[:2])
    return f"{major - 4}.{minor}" if major == 12 else "7.8"


_PROBE_PTX = """.version {ver}
.target {sm}
.address_size 64
.visible .entry probe() {{ ret; }}
"""


@functools.lru_cache(maxsize=None)
def target_accepted(arch: int) -> Optional[str]:
    """None when Triton's ptxas for ``sm_<arch>`` assembles for it, else why not (one line)."""
    try:
        path, version = ptxas_for(arch)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"no ptxas: {exc}"
    ptx_ver = _ptx_version(version)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.ptx")
        with open(src, "w") as f:
            f.write(_PROBE_PTX.format(ver=ptx_ver, sm=_sm_name(arch)))
        res = subprocess.run([path, f"--gpu-name={_sm_name(arch)}", src, "-o",
                              os.path.join(tmp, "probe.cubin")], capture_output=True, text=True)
    if res.returncode == 0:
        return None
    lines = (res.stderr or res.stdout).strip().splitlines()
    return f"ptxas {version} refuses {_sm_name(arch)}: {lines[-1] if lines else res.returncode}"


# ----------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def capture_launches() -> Iterator[List[Launch]]:
    """Record Triton launches made inside the ``with`` block instead of running them."""
    from triton.runtime import autotuner, jit

    import vitzoo.kernels._dispatch as dispatch

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("capture_launches needs TRITON_INTERPRET unset (real JITFunctions)")
    launches: List[Launch] = []

    def record(self, *args, grid=None, warmup=False, **kwargs):
        launches.append(Launch(self, args, dict(kwargs)))
        return None

    def autotune_all(self, *args, **kwargs):
        configs = self.prune_configs(kwargs) if hasattr(self, "prune_configs") else self.configs
        for config in configs:
            full = dict(kwargs)
            full.update(config.all_kwargs())
            self.fn.run(*args, **full)
        return None

    saved = (jit.JITFunction.run, autotuner.Autotuner.run, dispatch.triton_interpreting)
    jit.JITFunction.run = record
    autotuner.Autotuner.run = autotune_all
    dispatch.triton_interpreting = lambda: True
    try:
        yield launches
    finally:
        jit.JITFunction.run, autotuner.Autotuner.run, dispatch.triton_interpreting = saved


def unique_launches(launches: List[Launch]) -> List[Launch]:
    seen, out = set(), []
    for launch in launches:
        if launch.key() not in seen:
            seen.add(launch.key())
            out.append(launch)
    return out


def capture(call: Callable[[], Any]) -> List[Launch]:
    """Run ``call`` under :func:`capture_launches`; the distinct launches it made."""
    with capture_launches() as launches:
        call()
    return unique_launches(launches)


# ----------------------------------------------------------------------------------------------
# Compile
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    """A launch bound for one target: what ``triton.compile`` gets, and its cache key."""

    launch: Launch
    arch: int
    src: Any
    target: Any
    options: Any
    key: str


_BINDERS: Dict[Tuple[int, int], Tuple[Any, Any, Any, Any]] = {}


def prepare(launch: Launch, arch: int) -> Prepared:
    """Bind ``launch`` for ``sm_<arch>`` exactly as Triton's launcher would (specialisation on
    dtypes, 16-byte divisibility of pointers and ints, constexprs, options)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    cached = _BINDERS.get((id(fn), arch))
    if cached is None or cached[0] is not fn:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        cached = _BINDERS[(id(fn), arch)] = (fn, target, backend, binder)
    _, target, backend, binder = cached
    kwargs = launch.constexprs()
    bound, spec, opts = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    src = ASTSource(fn, signature, constexprs, attrs)
    ident = json.dumps([fn.cache_key, repr(signature), repr(sorted(constexprs.items(), key=str)),
                        repr(sorted(attrs.items(), key=str)), options.hash(), arch,
                        triton.__version__, ptxas_for(arch)[1]])
    key = hashlib.sha256(ident.encode()).hexdigest()[:24]
    return Prepared(launch, arch, src, target, options, key)


def spec_key(launch: Launch, arch: int) -> str:
    """Identity of the binary ``launch`` compiles to on ``sm_<arch>`` (dedupe and cache key)."""
    return prepare(launch, arch).key


@contextlib.contextmanager
def _ptxas_log() -> Iterator[io.StringIO]:
    """Make Triton run ptxas (no cache hit) and print its ``-v`` log; the log is captured."""
    buf = io.StringIO()
    try:
        from triton import knobs
    except ImportError:  # older Triton: no log; compile_launch runs ptxas itself
        yield buf
        return
    nvidia, compilation = getattr(knobs, "nvidia", None), getattr(knobs, "compilation", None)
    saved = []
    for obj, attr in ((nvidia, "dump_ptxas_log"), (compilation, "always_compile")):
        if obj is not None and hasattr(type(obj), attr):
            saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, True)
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def _parse_ptxas(text: str) -> Optional[Tuple[int, int, int]]:
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", text)]
    if not regs:
        return None
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    frame = max((int(x) for x in re.findall(r"(\d+) bytes stack frame", text)), default=0)
    return max(regs), spills, frame


def _run_ptxas(ptx: str, arch: int) -> Tuple[int, int, int]:
    path, _ = ptxas_for(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([path, "-v", f"--gpu-name={_sm_name(arch)}", src, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas ({path}) failed for {_sm_name(arch)}:\n{text}")
    stats = _parse_ptxas(text)
    if stats is None:
        raise RuntimeError(f"no register count in the ptxas log:\n{text}")
    return stats


def _load_on_device(compiled: Any) -> Dict[str, int]:
    """Load a compiled kernel on the current CUDA device; what the driver reports for it."""
    compiled._init_handles()
    return {"n_regs": int(compiled.n_regs), "n_spills": int(compiled.n_spills),
            "shared": int(compiled.metadata.shared)}


def compile_prepared(prep: Prepared, load: bool = False) -> CompileReport:
    """Compile a :class:`Prepared` launch; registers/spills from the ptxas Triton ran.

    ``load``: also load the binary on the current CUDA device (a GPU machine compiling for its
    own compute capability) and keep the driver's register / local-memory / shared numbers.
    """
    import triton

    t0 = time.monotonic()
    with _ptxas_log() as log:
        compiled = triton.compile(prep.src, target=prep.target, options=prep.options.__dict__)
    ptx = compiled.asm["ptx"]
    stats = _parse_ptxas(log.getvalue()) or _run_ptxas(ptx, prep.arch)
    meta = getattr(compiled, "metadata", None)
    shared = int(getattr(meta, "shared", 0) or 0)
    path, version = ptxas_for(prep.arch)
    return CompileReport(prep.launch.name, prep.arch, ptx, *stats, meta=prep.launch.constexprs(),
                         shared=shared, ptxas=path, ptxas_version=version,
                         seconds=round(time.monotonic() - t0, 2),
                         device=_load_on_device(compiled) if load else None)


def compile_launch(launch: Launch, arch: int = 90) -> CompileReport:
    """Compile one recorded launch for ``sm_<arch>`` exactly as Triton's launcher would."""
    return compile_prepared(prepare(launch, arch))
