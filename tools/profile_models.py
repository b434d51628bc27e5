#!/usr/bin/env python3
"""Parameters, FLOPs, latency, throughput and peak memory of timm / vitzoo models.

    python tools/profile_models.py 'vitzoo_*' --device cpu --batch-size 8
    python tools/profile_models.py vitzoo_swin_tiny_patch4_window7_224 --device cuda --dtype bf16 --compile
    python tools/profile_models.py vitzoo_swin_tiny_patch4_window7_224 vitzoo_poolformer_s12 --compare-timm
    python tools/profile_models.py vitzoo_nat_mini --versus vitzoo_swin_tiny_patch4_window7_224 -b 8

FLOPs come from fvcore's FlopCountAnalysis, which counts one multiply-add as one FLOP (so the
column is GMACs, like timm's tables); the zoo's custom kernels are counted through
`vitzoo.kernels.fvcore_handles()`. `--torch-flops` adds torch.utils.flop_counter's count (also
divided by two, same unit) as a cross-check. Latency is the median of timed repeats after
warmup, in eval mode under no_grad, at batch 1 and at `--batch-size`.

`--compare-timm` times each zoo model `vitzoo_X` against timm's own `X` in one process, with
the same input and interleaved repeats (zoo, timm, timm, zoo, ...) so machine noise hits both,
and reports the ratio zoo / timm. `--versus OTHER` does the same against any other model.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

import timm

try:
    import vitzoo  # noqa: F401  (registers the zoo in timm)
except ImportError:  # pragma: no cover
    vitzoo = None

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
ZOO_PREFIX = 'vitzoo_'


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

def resolve_names(patterns: Sequence[str]) -> list[str]:
    """Model names for exact names or wildcard patterns (fnmatch, e.g. 'vitzoo_swin*')."""
    names: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in '*?['):
            found = timm.list_models(pattern)
            if not found:
                raise ValueError(f'no registered model matches {pattern!r}')
        elif timm.is_model(pattern):
            found = [pattern]
        else:
            raise ValueError(f"unknown model '{pattern}'; list the zoo with "
                             f"`python -c \"import vitzoo; print(vitzoo.list_models())\"`")
        names += [n for n in found if n not in names]
    return names


def timm_twin(name: str) -> Optional[str]:
    """timm's name for the zoo model `vitzoo_X` (that is `X`) when timm has it, else None."""
    if not name.startswith(ZOO_PREFIX):
        return None
    twin = name[len(ZOO_PREFIX):]
    return twin if timm.is_model(twin) else None


def build_model(
        name: str,
        img_size: Optional[int] = None,
        device: str | torch.device = 'cpu',
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
) -> nn.Module:
    """An eval-mode model on `device`/`dtype`; `img_size` is passed when the model takes it."""
    if img_size is not None:
        try:
            model = timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError:  # a model without an img_size argument (most convnets)
            model = timm.create_model(name, **kwargs)
    else:
        model = timm.create_model(name, **kwargs)
    return model.eval().to(device=device, dtype=dtype)


def input_size_of(model: nn.Module, img_size: Optional[int] = None) -> tuple[int, int, int]:
    """(C, H, W) for `model`: its pretrained_cfg input size, or `img_size` squared."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = cfg.get('input_size', (3, 224, 224))
    if img_size is not None:
        h = w = img_size
    return c, h, w


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zoo_fvcore_handles() -> dict:
    try:
        from vitzoo import kernels
    except ImportError:
        return {}
    get = getattr(kernels, 'fvcore_handles', None)
    return dict(get()) if callable(get) else {}


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for aten::scaled_dot_product_attention, which fvcore does not count.

    q [..., L, d], k [..., S, d], v [..., S, dv]: q @ k^T is L*S*d multiply-adds per batch and
    head, attn @ v is L*S*dv (the softmax is not counted, as fvcore counts no softmax).
    """
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model: nn.Module, x: torch.Tensor) -> Optional[int]:
    """fvcore FLOPs (one multiply-add = one FLOP) for one forward of `x`; None if untraceable.

    Fused attention (SDPA) and the zoo's custom kernels are counted through extra handles.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # fvcore's import runs torch.jit.script (deprecated)
        from fvcore.nn import FlopCountAnalysis
    try:
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle(**{'aten::scaled_dot_product_attention': sdpa_flop_jit,
                                  **_zoo_fvcore_handles()})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger('fvcore').setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # tracer and TorchScript deprecation chatter
            return int(analysis.total())
    except Exception as e:  # tracing can fail on data-dependent control flow
        logging.getLogger(__name__).warning(f'fvcore could not count {type(model).__name__}: {e}')
        return None


def count_flops_torch(model: nn.Module, x: torch.Tensor) -> int:
    """torch.utils.flop_counter's FLOPs (one multiply-add = two FLOPs) for one forward of `x`."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_runner(model: nn.Module, x: torch.Tensor,
                amp_dtype: Optional[torch.dtype] = None) -> Callable[[], float]:
    """A function that runs one forward of `x` and returns its wall time in seconds."""
    ctx = (lambda: torch.autocast(x.device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

    def run() -> float:
        _sync(x.device)
        t0 = time.perf_counter()
        with torch.no_grad(), ctx():
            model(x)
        _sync(x.device)
        return time.perf_counter() - t0
    return run


def time_runner(run: Callable[[], float], warmup: int = 3, repeats: int = 10) -> list[float]:
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


def peak_memory_mb(run: Callable[[], float], device: torch.device) -> Optional[float]:
    """CUDA max_memory_allocated during one run (MiB); None on CPU."""
    if device.type != 'cuda':
        return None
    torch.cuda.reset_peak_memory_stats(device)
    run()
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def _make_input(model: nn.Module, batch: int, img_size, device, dtype) -> torch.Tensor:
    c, h, w = input_size_of(model, img_size)
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, c, h, w, generator=g).to(device=device, dtype=dtype)


def _prepare(model: nn.Module, compile_model: bool) -> nn.Module:
    return torch.compile(model) if compile_model else model


# ----------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------

def profile_model(
        name: str,
        device: str = 'cpu',
        dtype: str = 'fp32',
        amp: bool = False,
        batch_size: int = 8,
        img_size: Optional[int] = None,
        warmup: int = 3,
        repeats: int = 10,
        compile_model: bool = False,
        flops: bool = True,
        torch_flops: bool = False,
        **model_kwargs: Any,
) -> dict:
    """Profile one model; latencies in ms (median), throughput in img/s at `batch_size`."""
    dev = torch.device(device)
    # with --amp the weights stay fp32 and autocast picks the op precision
    param_dtype = torch.float32 if amp else DTYPES[dtype]
    amp_dtype = DTYPES[dtype] if amp and dtype != 'fp32' else None
    model = build_model(name, img_size, dev, param_dtype, **model_kwargs)
    c, h, w = input_size_of(model, img_size)
    row: dict[str, Any] = dict(
        model=name, device=dev.type, dtype=dtype + ('-amp' if amp_dtype else ''),
        input=f'{c}x{h}x{w}', params_m=count_params(model) / 1e6)
    if flops:
        x1_fp32 = _make_input(model, 1, img_size, 'cpu', torch.float32)
        ref = build_model(name, img_size, 'cpu', torch.float32, **model_kwargs) \
            if (dev.type != 'cpu' or param_dtype != torch.float32) else model
        n = count_flops(ref, x1_fp32)
        row['gmacs'] = None if n is None else n / 1e9
        if torch_flops:
            row['gmacs_torch'] = count_flops_torch(ref, x1_fp32) / 2e9
        del ref
    fwd = _prepare(model, compile_model)
    for b in sorted({1, batch_size}):
        x = _make_input(model, b, img_size, dev, param_dtype)
        run = make_runner(fwd, x, amp_dtype)
        t = statistics.median(time_runner(run, warmup, repeats))
        row[f'ms_b{b}'] = t * 1e3
        if b == batch_size:
            row[f'img_s_b{b}'] = b / t
            row['peak_mem_mb'] = peak_memory_mb(run, dev)
    return row


def compare_models(
        name: str,
        other: str,
        device: str = 'cpu',
        dtype: str = 'fp32',
        batch_sizes: Sequence[int] = (1,),
        img_size: Optional[int] = None,
        warmup: int = 3,
        repeats: int = 20,
        compile_model: bool = False,
) -> dict:
    """Latency of `name` and `other` side by side on the same input; ratio = name / other.

    Repeats alternate name-other / other-name so drift in machine load hits both. Medians in
    ms, and the median of the per-repeat ratios.
    """
    dev, dt = torch.device(device), DTYPES[dtype]
    model = build_model(name, img_size, dev, dt)
    other_model = build_model(other, img_size, dev, dt)
    row: dict[str, Any] = dict(model=name, versus=other, device=dev.type, dtype=dtype,
                               params_m=count_params(model) / 1e6,
                               versus_params_m=count_params(other_model) / 1e6)
    model_f, other_f = _prepare(model, compile_model), _prepare(other_model, compile_model)
    for b in batch_sizes:
        x = _make_input(model, b, img_size, dev, dt)
        run_a, run_b = make_runner(model_f, x), make_runner(other_f, x)
        for _ in range(warmup):
            run_a(), run_b()
        t_a, t_b = [], []
        for r in range(repeats):
            if r % 2:
                t_b.append(run_b()), t_a.append(run_a())
            else:
                t_a.append(run_a()), t_b.append(run_b())
        row[f'ms_b{b}'] = statistics.median(t_a) * 1e3
        row[f'versus_ms_b{b}'] = statistics.median(t_b) * 1e3
        row[f'ratio_b{b}'] = statistics.median(x / y for x, y in zip(t_a, t_b))
    return row


def compare_with_timm(name: str, *args: Any, **kwargs: Any) -> dict:
    """`compare_models` of zoo model `vitzoo_X` against timm's `X` (same arguments after `name`)."""
    twin = timm_twin(name)
    if twin is None:
        raise ValueError(f"{name!r} has no timm twin (expected timm model "
                         f"'{name[len(ZOO_PREFIX):] if name.startswith(ZOO_PREFIX) else name}')")
    return compare_models(name, twin, *args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.3f}' if abs(v) < 10 else f'{v:.1f}'
    return str(v)


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows (dicts) as a GitHub markdown table; columns in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
    lines += ['| ' + ' | '.join(_fmt(r.get(c)) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def write_csv(rows: Sequence[dict], path: str) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def environment() -> dict:
    """Versions and device, to store next to the numbers."""
    env = dict(date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), torch=torch.__version__,
               timm=timm.__version__, threads=torch.get_num_threads())
    if vitzoo is not None:
        env['vitzoo'] = getattr(vitzoo, '__version__', '?')
    if torch.cuda.is_available():
        env['gpu'] = torch.cuda.get_device_name()
    return env


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('models', nargs='+', help="names or patterns, e.g. 'vitzoo_*'")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', default='fp32', choices=sorted(DTYPES))
    p.add_argument('--amp', action='store_true', help='autocast to --dtype instead of casting weights')
    p.add_argument('-b', '--batch-size', type=int, default=None,
                   help='second batch size besides 1 (default: 8; none with --compare-timm)')
    p.add_argument('--img-size', type=int, default=None, help="default: the model's own")
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--compile', action='store_true', help='torch.compile the models')
    p.add_argument('--no-flops', action='store_true')
    p.add_argument('--torch-flops', action='store_true', help='add torch.utils.flop_counter column')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    p.add_argument('--compare-timm', action='store_true',
                   help='time vitzoo_X against timm X, interleaved, at batch 1 (and --batch-size)')
    p.add_argument('--versus', default='', metavar='MODEL',
                   help='time each model against MODEL, interleaved, at batch 1 (and --batch-size)')
    p.add_argument('--json', default='', metavar='FILE')
    p.add_argument('--csv', default='', metavar='FILE')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        names = resolve_names(args.models)
        rows = []
        for name in names:
            if args.versus:
                rows.append(compare_models(
                    name, args.versus, args.device, args.dtype, sorted({1, args.batch_size or 1}),
                    args.img_size, args.warmup, args.repeats, args.compile))
            elif args.compare_timm:
                if timm_twin(name) is None:
                    print(f'skipping {name}: no timm twin', file=sys.stderr)
                    continue
                rows.append(compare_with_timm(
                    name, args.device, args.dtype, sorted({1, args.batch_size or 1}), args.img_size,
                    args.warmup, args.repeats, args.compile))
            else:
                rows.append(profile_model(
                    name, args.device, args.dtype, args.amp, args.batch_size or 8, args.img_size,
                    args.warmup, args.repeats, args.compile, not args.no_flops, args.torch_flops))
            print(markdown_table(rows[-1:]) if len(names) == 1 else f'done {name}', file=sys.stderr)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    env = environment()
    print(markdown_table(rows))
    print('\n' + ', '.join(f'{k} {v}' for k, v in env.items()))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(env=env, command=sys.argv, rows=rows), f, indent=2)
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == '__main__':
    sys.exit(main())
