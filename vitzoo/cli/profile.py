"""vitzoo-profile: parameters, GMACs, eval latency/throughput, training speed and peak memory.

    vitzoo-profile 'vitzoo_*' --device cpu -b 8 --out-dir prof/
    vitzoo-profile vitzoo_swin_tiny_patch4_window7_224 --device cuda --dtype bf16 --amp --compile
    vitzoo-profile vitzoo_efficientvit_m0 vitzoo_shvit_s1 --fuse --compare-timm --official
    vitzoo-profile vitzoo_nat_mini --versus vitzoo_swin_tiny_patch4_window7_224 -b 8

Per model: parameters; GMACs from fvcore (one multiply-add = one, like the official tables and
timm's), with handles for SDPA and every zoo op (``vitzoo.kernels.fvcore_handles()``), checked
against torch's FlopCounterMode with the same formulas (a warning names any kind of op where the
two differ by more than 1%); eval latency at batch 1 and throughput at ``--batch-size``; a
training step (forward, cross-entropy, backward, AdamW) at ``--train-batch-size``; peak memory
(CUDA: max_memory_allocated; CPU: RSS growth, labelled). Every timing is warm-up runs then
``--repeats`` timed runs: median, min, max and IQR. ``--compare-timm`` / ``--versus`` time the
eval forwards interleaved with timm's twin / another model and give the ratio (ours / theirs).
``--official`` adds the official parameters, GMACs and top-1 (``vitzoo/results/official.csv``,
with sources) and ours / official. Outputs: a markdown table on stdout, and ``--csv``, ``--json``
(every number and the environment) and ``--plot`` (throughput vs ImageNet top-1, PNG);
``--out-dir`` writes all three. Exit status: 0, 2 for bad input (one line on stderr), 1 when a
model failed mid-run (its row says why; the others are still profiled).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import timm

import vitzoo  # noqa: F401  (registers the zoo in timm)
from vitzoo.cli.img_size import fmt_size, parse_img_size, size_arg
from vitzoo.cli.profile_flops import (FLOP_TOLERANCE, compare_flops, count_flops, count_flops_torch,
                                      flop_breakdowns)
from vitzoo.cli.profile_timing import (interleaved, make_runner, make_train_step, memory_kind,
                                       peak_memory_mb, summarize, time_runner)

__all__ = ["main", "profile_model", "compare_models", "compare_with_timm", "resolve_names",
           "timm_twin", "build_model", "markdown_table", "count_flops", "count_flops_torch",
           "ProfileError", "environment"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ZOO_PREFIX = "vitzoo_"


class ProfileError(ValueError):
    """Bad input: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Input checks and model building
# ----------------------------------------------------------------------------------------------

def resolve_names(patterns: Sequence[str]) -> list[str]:
    """Model names for exact names or wildcard patterns (fnmatch, e.g. 'vitzoo_swin*')."""
    names: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            found = timm.list_models(pattern)
            if not found:
                raise ProfileError(f"no registered model matches {pattern!r}")
        elif timm.is_model(pattern):
            found = [pattern]
        else:
            raise ProfileError(f"unknown model '{pattern}'; list the zoo with "
                               f"`python -c \"import vitzoo; print(vitzoo.list_models())\"`")
        names += [n for n in found if n not in names]
    return names


def check_device(device: str) -> torch.device:
    """`device` as a torch.device, or a ProfileError when it does not exist here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ProfileError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ProfileError(f"--device {device}: no CUDA GPU is available on this machine "
                               "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ProfileError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ProfileError(f"--device {device}: MPS is not available on this machine")
    return dev


def timm_twin(name: str) -> Optional[str]:
    """timm's name for the zoo model `vitzoo_X` (that is `X`) when timm has it, else None."""
    if not name.startswith(ZOO_PREFIX):
        return None
    twin = name[len(ZOO_PREFIX):]
    return twin if timm.is_model(twin) else None


ImgSize = Optional[int | tuple[int, int]]


def _hw(img_size: ImgSize) -> Optional[tuple[int, int]]:
    """(H, W) for an int (square), an (H, W) pair, or None."""
    if img_size is None:
        return None
    return (int(img_size), int(img_size)) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def build_model(name: str, img_size: ImgSize = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, **kwargs: Any) -> nn.Module:
    """An eval-mode model on `device`/`dtype`; `img_size` (N or (H, W)) is passed when the model
    takes it (`features_only=True` in kwargs gives the backbone without its head)."""
    if img_size is not None:
        try:
            model = timm.create_model(name, img_size=size_arg(_hw(img_size)), **kwargs)
        except TypeError:  # a model without an img_size argument (most convnets)
            model = timm.create_model(name, **kwargs)
    else:
        model = timm.create_model(name, **kwargs)
    return model.eval().to(device=device, dtype=dtype)


def input_size_of(model: nn.Module, img_size: ImgSize = None) -> tuple[int, int, int]:
    """(C, H, W) for `model`: its pretrained_cfg input size, or `img_size` (N or (H, W))."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, w = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        h, w = _hw(img_size)
    return c, h, w


def check_img_size(name: str, img_size: ImgSize, **kwargs: Any) -> None:
    """ProfileError unless `name` builds and runs one forward at `img_size` (CPU, batch 1)."""
    try:
        model = build_model(name, img_size, **kwargs)
        with torch.no_grad():
            model(torch.zeros(1, *input_size_of(model, img_size)))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ProfileError(f"{name} cannot take --img-size {fmt_size(_hw(img_size))}: {reason}") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _make_input(model: nn.Module, batch: int, img_size, device, dtype,
                channels_last: bool = False) -> torch.Tensor:
    c, h, w = input_size_of(model, img_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _prepare(model: nn.Module, compile_mode: Optional[str | bool]) -> nn.Module:
    if not compile_mode:
        return model
    mode = None if compile_mode in (True, "default") else compile_mode
    return torch.compile(model, mode=mode)


def _fuse(model: nn.Module) -> bool:
    """Fold BatchNorms (EfficientViT / SHViT `fuse()`), in place; False when the model has none."""
    fuse = getattr(model, "fuse", None)
    if not callable(fuse):
        return False
    fuse()
    return True


# ----------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------

def _timing_columns(row: dict, key: str, times: Sequence[float]) -> float:
    """Add `key` (median ms) and its min/max/IQR columns; returns the median in seconds."""
    s = summarize(times)
    row[key] = s["median"] * 1e3
    row[f"{key}_min"], row[f"{key}_max"], row[f"{key}_iqr"] = (s["min"] * 1e3, s["max"] * 1e3,
                                                               s["iqr"] * 1e3)
    return s["median"]


def _flop_columns(row: dict, model: nn.Module, x: torch.Tensor) -> list[str]:
    """gmacs (fvcore), gmacs_torch (FlopCounterMode / 2) and the check; returns the mismatches."""
    try:
        fv_ops, torch_ops = flop_breakdowns(model, x)
    except Exception as e:  # fvcore's tracer cannot follow every model
        row["gmacs"] = None
        row["gmacs_torch"] = count_flops_torch(model, x) / 2e9
        row["flop_check"] = f"fvcore failed: {type(e).__name__}"
        return []
    check = compare_flops(fv_ops, torch_ops)
    row["gmacs"] = sum(fv_ops.values()) / 1e9
    row["gmacs_torch"] = sum(torch_ops.values()) / 1e9
    row["gmacs_fvcore_only"] = sum(check["fvcore_only"].values()) / 1e9
    row["flop_check"] = "ok" if not check["mismatches"] else "mismatch: " + "; ".join(
        check["mismatches"])
    return check["mismatches"]


def _official_columns(row: dict, name: str) -> None:
    from vitzoo.results import official
    ref = official(name)
    if ref is None:
        return
    same_size = ref["img_size"] is None or row.get("input", "").endswith(f"x{int(ref['img_size'])}")
    for key, source in (("params_m", "params_source"), ("gmacs", "gmacs_source"),
                        ("top1", "top1_source")):
        row[f"official_{key}"] = ref[key]
        row[f"official_{key}_source"] = ref[source]
    row["official_pretrain"] = ref["pretrain"]
    if ref["params_m"]:
        row["params_ratio"] = row["params_m"] / ref["params_m"]
    if ref["gmacs"] and row.get("gmacs") and same_size:
        row["gmacs_ratio"] = row["gmacs"] / ref["gmacs"]
    if ref["timm_top1"] is not None:
        row["timm_top1"], row["timm_top1_source"] = ref["timm_top1"], ref["timm_top1_source"]


def profile_model(
        name: str,
        device: str = "cpu",
        dtype: str = "fp32",
        amp: bool = False,
        batch_size: int = 8,
        img_size: ImgSize = None,
        warmup: int = 3,
        repeats: int = 10,
        compile_model: Optional[str | bool] = None,
        flops: bool = True,
        torch_flops: bool = True,
        train_batch_size: Optional[int] = None,
        channels_last: bool = False,
        fuse: bool = False,
        versus: Optional[str] = None,
        official: bool = False,
        warn=None,
        features_only: bool = False,
        **model_kwargs: Any,
) -> dict:
    """Profile one model; times in ms (median, with _min/_max/_iqr), throughput in images/s.

    `versus`: time the eval forwards interleaved with that model (columns ``versus_*`` and
    ``ratio_b*`` = ours / theirs). `train_batch_size`: also time training steps (None: skip).
    `warn`: called with a line for each FLOP-check mismatch. `features_only`: the backbone as a
    detector uses it (timm's features_only model: feature maps, no head); GMACs, latency and
    memory are then the backbone's, and the training step's loss is the mean of every map.
    """
    if features_only:
        model_kwargs["features_only"] = True
        official = False  # the official tables count the classifier at its own size
    dev = torch.device(device)
    param_dtype = torch.float32 if amp else DTYPES[dtype]  # --amp: fp32 weights + autocast
    amp_dtype = DTYPES[dtype] if amp and dtype != "fp32" else None
    model = build_model(name, img_size, dev, param_dtype, **model_kwargs)
    fused = _fuse(model) if fuse else False
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    c, h, w = input_size_of(model, img_size)
    row: dict[str, Any] = dict(model=name)
    if versus:
        row["versus"] = versus
    row.update(device=dev.type, dtype=dtype + ("-amp" if amp_dtype else ""), input=f"{c}x{h}x{w}",
               params_m=count_params(model) / 1e6)
    if features_only:
        info = model.feature_info
        row["features"] = " ".join(f"{ch}/{r}" for ch, r in zip(info.channels(), info.reduction()))
    if fuse:
        row["fused"] = fused
    if compile_model:
        row["compile"] = "default" if compile_model is True else compile_model
    if channels_last:
        row["channels_last"] = True
    if flops:
        x1 = _make_input(model, 1, img_size, "cpu", torch.float32)
        ref = model if (dev.type == "cpu" and param_dtype == torch.float32) else None
        if ref is None:
            ref = build_model(name, img_size, "cpu", torch.float32, **model_kwargs)
            _fuse(ref) if fused else None
        for line in _flop_columns(row, ref, x1):
            (warn or (lambda s: print(s, file=sys.stderr)))(
                f"warning: {name}: fvcore and FlopCounterMode disagree by more than "
                f"{FLOP_TOLERANCE:.0%} on {line}")
        if not torch_flops:
            row.pop("gmacs_torch", None)
        del ref
    if official:
        _official_columns(row, name)

    fwd = _prepare(model, compile_model)
    other = None
    if versus:
        other = build_model(versus, img_size, dev, param_dtype, **({"features_only": True} if features_only else {}))
        if fuse:
            row["versus_fused"] = _fuse(other)
        if channels_last:
            other = other.to(memory_format=torch.channels_last)
        row["versus_params_m"] = count_params(other) / 1e6
        other = _prepare(other, compile_model)
    # peak memory first: the first run at a shape is the one that allocates (later runs reuse
    # the allocator's cache, which would hide the growth on CPU)
    x = _make_input(model, batch_size, img_size, dev, param_dtype, channels_last)
    row["eval_peak_mem_mb"] = peak_memory_mb(make_runner(fwd, x, amp_dtype), dev)
    for b in sorted({1, batch_size}):
        x = _make_input(model, b, img_size, dev, param_dtype, channels_last)
        run = make_runner(fwd, x, amp_dtype)
        if other is None:
            t = _timing_columns(row, f"ms_b{b}", time_runner(run, warmup, repeats))
        else:
            t_a, t_b = interleaved(run, make_runner(other, x, amp_dtype), warmup, repeats)
            t = _timing_columns(row, f"ms_b{b}", t_a)
            t_other = _timing_columns(row, f"versus_ms_b{b}", t_b)
            row[f"ratio_b{b}"] = statistics.median([p / q for p, q in zip(t_a, t_b)])
            if b == batch_size and b > 1:
                row[f"versus_img_s_b{b}"] = b / t_other
        if b == batch_size and b > 1:
            row[f"img_s_b{b}"] = b / t
    if train_batch_size:
        xt = _make_input(model, train_batch_size, img_size, dev, param_dtype, channels_last)
        step = make_train_step(fwd, xt, getattr(model, "num_classes", 1000), amp_dtype)
        row["train_peak_mem_mb"] = peak_memory_mb(step, dev)  # includes AdamW's state
        t = _timing_columns(row, f"train_ms_b{train_batch_size}",
                            time_runner(step, warmup, repeats))
        row[f"train_img_s_b{train_batch_size}"] = train_batch_size / t
        model.eval()
    row["mem_kind"] = memory_kind(dev)
    return row


def compare_models(name: str, other: str, device: str = "cpu", dtype: str = "fp32",
                   batch_sizes: Sequence[int] = (1,), img_size: Optional[int] = None,
                   warmup: int = 3, repeats: int = 20,
                   compile_model: Optional[str | bool] = None) -> dict:
    """Eval latency of `name` and `other` interleaved on the same input; ratio = name / other."""
    dev, dt = torch.device(device), DTYPES[dtype]
    model, other_model = build_model(name, img_size, dev, dt), build_model(other, img_size, dev, dt)
    row: dict[str, Any] = dict(model=name, versus=other, device=dev.type, dtype=dtype,
                               params_m=count_params(model) / 1e6,
                               versus_params_m=count_params(other_model) / 1e6)
    model_f, other_f = _prepare(model, compile_model), _prepare(other_model, compile_model)
    for b in batch_sizes:
        x = _make_input(model, b, img_size, dev, dt)
        t_a, t_b = interleaved(make_runner(model_f, x), make_runner(other_f, x), warmup, repeats)
        _timing_columns(row, f"ms_b{b}", t_a)
        _timing_columns(row, f"versus_ms_b{b}", t_b)
        row[f"ratio_b{b}"] = statistics.median([p / q for p, q in zip(t_a, t_b)])
    return row


def compare_with_timm(name: str, *args: Any, **kwargs: Any) -> dict:
    """`compare_models` of zoo model `vitzoo_X` against timm's `X` (same arguments after `name`)."""
    twin = timm_twin(name)
    if twin is None:
        raise ProfileError(f"{name!r} has no timm twin (expected timm model "
                           f"'{name[len(ZOO_PREFIX):] if name.startswith(ZOO_PREFIX) else name}')")
    return compare_models(name, twin, *args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    """Rows (dicts) as a GitHub markdown table; columns in first-seen order unless given."""
    cols: list[str] = list(columns or [])
    if not cols:
        for r in rows:
            cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _spread(row: dict, key: str) -> Optional[str]:
    if row.get(key) is None:
        return None
    return f"{_fmt(row[key])} ({_fmt(row[key + '_min'])}-{_fmt(row[key + '_max'])})"


def summary_rows(rows: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """The stdout table: the main numbers, timings as 'median (min-max)'; everything else goes to
    the CSV/JSON files."""
    out = []
    for r in rows:
        s: dict[str, Any] = {"model": r["model"]}
        if "versus" in r:
            s["versus"] = r["versus"]
        if "error" in r:
            s["error"] = r["error"]
            out.append(s)
            continue
        s["params (M)"] = r.get("params_m")
        if "features" in r:
            s["input"], s["features (ch/stride)"] = r.get("input"), r["features"]
        if "official_params_m" in r:
            s["official params (M)"] = r.get("official_params_m")
        s["GMACs"] = r.get("gmacs")
        if "official_gmacs" in r:
            s["official GMACs"] = r.get("official_gmacs")
            s["GMACs ours/official"] = r.get("gmacs_ratio")
        if "official_top1" in r:
            s["top-1 (paper)"] = r.get("official_top1")
        for k in sorted(k for k in r if k.startswith("ms_b") and k.count("_") == 1):
            s[f"{k[3:]} ms"] = _spread(r, k)
            if f"ratio_{k[3:]}" in r:
                s[f"ratio_{k[3:]} (ours/versus)"] = r[f"ratio_{k[3:]}"]
        for k in (k for k in r if k.startswith("img_s_b")):
            s[f"eval img/s ({k[6:]})"] = r[k]
        for k in (k for k in r if k.startswith("train_ms_b") and k.count("_") == 2):
            s[f"train step ms ({k[9:]})"] = _spread(r, k)
        for k in (k for k in r if k.startswith("train_img_s_b")):
            s[f"train img/s ({k[12:]})"] = r[k]
        s["eval peak MiB"] = r.get("eval_peak_mem_mb")
        if "train_peak_mem_mb" in r:
            s["train peak MiB"] = r.get("train_peak_mem_mb")
        s["FLOP check"] = r.get("flop_check")
        out.append(s)
    cols: list[str] = []
    for s in out:
        cols += [k for k in s if k not in cols]
    return out, cols


def write_csv(rows: Sequence[dict], path: str) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu", command: Optional[Sequence[str]] = None) -> dict:
    """Versions, device and command, to store next to the numbers."""
    env: dict[str, Any] = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), device=device,
                               python=platform.python_version(), torch=torch.__version__,
                               timm=timm.__version__, vitzoo=getattr(vitzoo, "__version__", "?"),
                               threads=torch.get_num_threads(), cpu=_cpu_name())
    for pkg in ("triton", "fvcore"):
        try:
            from importlib.metadata import version
            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    env["memory"] = memory_kind(torch.device(device))
    env["command"] = " ".join(command if command is not None else sys.argv)
    return env


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitzoo-profile", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("models", nargs="+", help="names or patterns, e.g. 'vitzoo_*'")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--amp", action="store_true", help="autocast to --dtype (weights stay fp32)")
    p.add_argument("-b", "--batch-size", type=_positive, default=8,
                   help="eval throughput batch size (latency is always also timed at batch 1)")
    p.add_argument("--train-batch-size", type=_positive, default=None,
                   help="training-step batch size (default: --batch-size)")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.add_argument("--img-size", type=parse_img_size, default=None, metavar="N|HxW",
                   help="input size, N or HxW such as 800x1333; the model is built at it where its "
                        "constructor takes img_size (default: the model's own)")
    p.add_argument("--features-only", action="store_true",
                   help="profile the backbone as a detector uses it: timm's features_only model "
                        "(feature maps, no head); with --img-size, GMACs/latency/memory at that size")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the models (optional mode, e.g. max-autotune)")
    p.add_argument("--fuse", action="store_true",
                   help="fold BatchNorms first (EfficientViT/SHViT fuse()); counted and timed fused")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=_positive, default=10)
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--threads", type=_positive, default=None, help="torch.set_num_threads")
    p.add_argument("--compare-timm", action="store_true",
                   help="time vitzoo_X against timm's X, interleaved; ratio = ours / timm")
    p.add_argument("--versus", default="", metavar="MODEL",
                   help="time each model against MODEL, interleaved; ratio = ours / MODEL")
    p.add_argument("--official", action="store_true",
                   help="add the official params / GMACs / top-1 and ours/official")
    p.add_argument("--out-dir", default="", metavar="DIR",
                   help="write profile.csv, profile.json and profile.png there")
    p.add_argument("--csv", default="", metavar="FILE")
    p.add_argument("--json", default="", metavar="FILE")
    p.add_argument("--plot", default="", metavar="FILE", help="PNG: throughput vs ImageNet top-1")
    p.add_argument("--no-progress", action="store_true")
    return p


def _validate(args: argparse.Namespace) -> list[str]:
    check_device(args.device)
    names = resolve_names(args.models)
    if args.versus:
        resolve_names([args.versus])
    kwargs = {"features_only": True} if args.features_only else {}
    if args.img_size is not None or args.features_only:
        for name in names + ([args.versus] if args.versus else []):
            check_img_size(name, args.img_size, **kwargs) if args.img_size is not None else \
                check_features(name)
    return names


def check_features(name: str) -> None:
    """ProfileError unless timm can build `name` with features_only=True."""
    try:
        build_model(name, features_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ProfileError(f"{name} cannot be built with --features-only: {reason}") from None


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def _outputs(args: argparse.Namespace) -> dict:
    """The output files, checked before any work: each one's folder exists and is writable
    (ProfileError otherwise); without matplotlib the PNG is dropped with one line naming the extra."""
    out = dict(csv=args.csv, json=args.json, plot=args.plot)
    if args.out_dir:
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as e:
            raise ProfileError(f"--out-dir {args.out_dir}: cannot create it ({e.strerror})") from None
        for key, ext in (("csv", "csv"), ("json", "json"), ("plot", "png")):
            out[key] = out[key] or os.path.join(args.out_dir, f"profile.{ext}")
    for key, path in out.items():
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        flag = f"--{key}" if getattr(args, key) else "--out-dir"
        if os.path.isdir(path):
            raise ProfileError(f"{flag} {path}: is a folder, expected a file name")
        if not os.path.isdir(folder):
            raise ProfileError(f"{flag} {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise ProfileError(f"{flag} {path}: folder {folder} is not writable")
    if out["plot"] and not plot_available():
        print("note: matplotlib is not installed: no plot (pip install 'vitzoo[plot]')", file=sys.stderr)
        out["plot"] = ""
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = ["vitzoo-profile", *(argv if argv is not None else sys.argv[1:])]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        names = _validate(args)
        out = _outputs(args)
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm
    device = str(check_device(args.device))
    rows, failed = [], 0
    bar = tqdm(names, desc="profiling", unit="model", file=sys.stderr,
               disable=True if args.no_progress else None)
    for name in bar:
        bar.set_postfix_str(name)
        versus = args.versus or (timm_twin(name) if args.compare_timm else None)
        if args.compare_timm and not args.versus and versus is None:
            print(f"note: {name} has no timm twin; profiled alone", file=sys.stderr)
        try:
            rows.append(profile_model(
                name, device, args.dtype, args.amp, args.batch_size,
                args.img_size, args.warmup, args.repeats, args.compile, not args.no_flops,
                train_batch_size=None if args.no_train else (args.train_batch_size or args.batch_size),
                channels_last=args.channels_last, fuse=args.fuse, versus=versus,
                official=args.official, warn=lambda s: tqdm.write(s, file=sys.stderr),
                features_only=args.features_only))
        except Exception as e:  # a model that fails mid-run is reported in its row
            failed += 1
            reason = (str(e).strip().splitlines() or [""])[0]
            rows.append(dict(model=name, error=f"{type(e).__name__}: {reason}"[:300]))
            tqdm.write(f"error: {name}: {rows[-1]['error']}", file=sys.stderr)
    env = environment(args.device, command)
    table, cols = summary_rows(rows)
    print(markdown_table(table, cols))
    print("\n" + ", ".join(f"{k} {v}" for k, v in env.items() if k != "command"))
    if out["json"]:
        with open(out["json"], "w") as f:
            json.dump(dict(env=env, command=command, rows=rows), f, indent=2)
    if out["csv"]:
        write_csv(rows, out["csv"])
    if out["plot"]:
        from vitzoo.cli.profile_plot import plot_tradeoff
        where = env.get("gpu", "") if args.device.startswith("cuda") else env["cpu"]
        plot_tradeoff(rows, out["plot"],
                      title=f"{args.device} ({where}), eval batch {args.batch_size}, {args.dtype}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
