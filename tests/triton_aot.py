"""Ahead-of-time Triton compiles for a GPU we do not have: capture real launches, compile, inspect.

How the sm_90 / sm_80 compile tests prove that a kernel runs on tensor cores, on a CPU machine:

1. :func:`capture_launches` runs a Python call (e.g. ``na2d(q, k, v, ...)`` with
   ``VITZOO_KERNELS=triton``) with Triton's launch path replaced by a recorder. Nothing executes:
   every ``kernel[grid](...)`` (through ``@triton.autotune`` / ``@triton.heuristics`` too) is
   recorded with the exact positional arguments and meta-parameters that launcher passed. An
   autotuned kernel is recorded once per config, so every config gets compiled.
   Must run in a process where ``TRITON_INTERPRET`` is unset (the kernels must be real
   ``JITFunction`` objects); CPU tensors reach the Triton path because the recorder also makes
   the dispatch rule treat CPU tensors as launchable.
2. :func:`compile_launch` compiles one recorded launch for ``GPUTarget("cuda", arch, 32)`` with
   the same binder Triton uses at launch time (same specialisation: dtypes, divisibility,
   constexprs), then runs the ``ptxas`` that ships with Triton with ``-v`` to read registers and
   spill bytes.

Use from a child process (see ``tests/test_kernels_compile.py``): Triton caches the interpreter
flag at import.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Tuple

__all__ = ["Launch", "CompileReport", "capture_launches", "compile_launch", "tensor_core_ops"]


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
        """What makes two launches compile to different binaries (dtypes + meta-parameters)."""
        sig = tuple(str(getattr(a, "dtype", type(a).__name__)) for a in self.args)
        meta = tuple(sorted((k, repr(v)) for k, v in self.kwargs.items()))
        return (self.name, sig, meta)


@dataclasses.dataclass
class CompileReport:
    name: str
    arch: int
    ptx: str
    registers: int
    spill_bytes: int           # spill stores + spill loads reported by ptxas
    local_bytes: int           # stack frame (local memory) reported by ptxas
    meta: Dict[str, Any]

    @property
    def tensor_core_ops(self) -> List[str]:
        return tensor_core_ops(self.ptx)


_TC_PATTERN = re.compile(r"\b(wgmma\.mma_async[\w.]*|mma\.sync[\w.]*)")


def tensor_core_ops(ptx: str) -> List[str]:
    """The distinct tensor-core instructions (``wgmma.mma_async...`` / ``mma.sync...``) in PTX."""
    return sorted(set(_TC_PATTERN.findall(ptx)))


@contextlib.contextmanager
def capture_launches() -> Iterator[List[Launch]]:
    """Record Triton launches made inside the ``with`` block instead of running them."""
    import triton
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
    del triton


def unique_launches(launches: List[Launch]) -> List[Launch]:
    seen, out = set(), []
    for launch in launches:
        if launch.key() not in seen:
            seen.add(launch.key())
            out.append(launch)
    return out


def _ptxas_path() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _ptxas_stats(ptx: str, arch: int) -> Tuple[int, int, int]:
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([_ptxas_path(), f"-arch={sm}", "-v", src, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed for {sm}:\n{text}")
    regs = max((int(x) for x in re.findall(r"Used (\d+) registers", text)), default=0)
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    frame = max((int(x) for x in re.findall(r"(\d+) bytes stack frame", text)), default=0)
    return regs, spills, frame


def compile_launch(launch: Launch, arch: int = 90) -> CompileReport:
    """Compile one recorded launch for ``sm_<arch>`` exactly as Triton's launcher would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {k: v for k, v in launch.kwargs.items() if k not in ("grid", "warmup")}
    bound, spec, opts = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    ptx = compiled.asm["ptx"]
    regs, spills, frame = _ptxas_stats(ptx, arch)
    meta = {k: v for k, v in kwargs.items()}
    return CompileReport(launch.name, arch, ptx, regs, spills, frame, meta)


def capture(call: Callable[[], Any]) -> List[Launch]:
    """Run ``call`` under :func:`capture_launches`; the distinct launches it made."""
    with capture_launches() as launches:
        call()
    return unique_launches(launches)
