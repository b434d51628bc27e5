#!/usr/bin/env python
"""Kernel benchmarks: every op in tools/kernel_bench/, and a DiNAT training step vs FlexAttention.

Op level (default): each module of ``tools/kernel_bench/`` (one per op: ``neighborhood``,
``window``, ``routing``, ...) times its impls side by side in one run and returns rows
``{op, case, impl, fwd_ms, fwd_bwd_ms, peak_mem_mb[, ratio_vs, speedup]}``; this script runs
the ops asked for (``--ops all`` = every module present; a named op whose module is missing is
skipped with a note) and writes all rows to ``benchmarks/results/kernels_<device>_<stamp>.json``
and ``.md``. bf16 by default on CUDA; without a GPU, ``--device cuda`` exits non-zero with one
line (``--allow-cpu`` or ``--device cpu``: tiny fp32 plumbing run, reference paths only).

    python tools/bench_kernels.py --device cuda                      # all ops, full sizes
    python tools/bench_kernels.py --device cuda --quick --ops neighborhood
    python tools/bench_kernels.py --allow-cpu --quick                # no GPU: plumbing only

Model level (``--model-step``): one full training step (zero_grad, forward, cross-entropy,
backward, AdamW step; bf16 autocast) of ``vitzoo_dinat_tiny`` at 224, batch 128 (quick: 32),
for the same weights run four ways:

* ``vitzoo`` -- the model as built, na2d on the Triton kernels (VITZOO_KERNELS=triton), eager;
* ``flex`` -- every NeighborhoodAttention2D swapped (by this script, see
  ``swap_to_flex``; the package is untouched) for ``FlexNeighborhoodAttention2D``: same
  parameters, attention via FlexAttention with the neighbourhood block mask + rpb score_mod;
  only the flex_attention call is torch.compile'd (FlexAttention is unusable uncompiled),
  the rest of the model eager as in ``vitzoo``;
* ``vitzoo_compiled`` / ``flex_compiled`` -- the same two models under torch.compile(model)
  (forward + backward graphs; the fused AdamW step stays eager in both);
* ``reference`` (opt-in) -- na2d on the PyTorch reference, eager.

Before timing, the flex-swapped model's fp32 logits must match the vitzoo model's (max abs diff
<= --check-tol, default 1e-4) or the run aborts. Ratios reported: flex/vitzoo and
flex_compiled/vitzoo_compiled (> 1: vitzoo faster).

    python tools/bench_kernels.py --model-step                       # DiNAT-tiny, batch 128
    python tools/bench_kernels.py --model-step --quick               # batch 32, 5 steps
    python tools/bench_kernels.py --model-step --allow-cpu --quick --model vitzoo_dinat_mini \
        --img-size 64 --batch 2                                       # CPU plumbing run

On CPU (plumbing only, no meaningful speed): the guard runs the real flex_attention forward
(eager); FlexAttention has no CPU backward, so the 'flex' training row runs the swapped model
through ``flex_dense_emulation`` (same mask/score mods, dense) and nothing is compiled by default.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import kernel_bench  # noqa: E402
from kernel_bench._timing import time_ms as _time_ms  # noqa: E402
from kernel_bench.neighborhood import neighbourhood_mods as _neighbourhood_mods  # noqa: E402

NO_GPU_EXIT = 2


def _versions() -> Dict[str, str]:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "timm"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def run_ops(names: List[str], device: str, dtype: torch.dtype, quick: bool,
            **options: Any) -> tuple:
    """Run each op module; returns (rows, ran, skipped). An op that raises gives an error row."""
    rows: List[Dict[str, Any]] = []
    ran, skipped = [], []
    for name in names:
        try:
            module = kernel_bench.load(name)
        except Exception as exc:  # noqa: BLE001 - a broken module is reported, not fatal
            rows.append(kernel_bench.error_row(name, exc))
            ran.append(name)
            continue
        if module is None:
            print(f"bench_kernels: skipped op '{name}': no tools/kernel_bench/{name}.py",
                  flush=True)
            skipped.append(name)
            continue
        ran.append(name)
        try:
            op_rows = kernel_bench.call_run(module, device, dtype, quick, **options)
        except Exception as exc:  # noqa: BLE001
            op_rows = [kernel_bench.error_row(getattr(module, "OP", name), exc)]
        for r in op_rows:
            print(json.dumps(r), flush=True)
        rows += op_rows
    return rows, ran, skipped


def _fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def ops_markdown(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """One table per op (case, impl, fwd, fwd+bwd, peak MiB, speedup) and the errors."""
    lines = [f"# Kernel benchmark ({meta['device_name']})", "",
             f"- date: {meta['date']}",
             f"- torch {meta['torch']}, triton {meta['triton']}, timm {meta['timm']}, "
             f"python {meta['python']}",
             f"- command: `{meta['command']}`",
             f"- dtype {meta['dtype']}; times are medians in ms; peak MiB = CUDA memory allocated "
             "during one fwd+bwd (inputs included); speedup = the `vs` impl's fwd+bwd ms / this "
             "row's (> 1: faster).", ""]
    if meta.get("skipped_ops"):
        lines += [f"- skipped (no module): {', '.join(meta['skipped_ops'])}", ""]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines += [f"## {op}", "", "| case | impl | fwd ms | fwd+bwd ms | peak MiB | speedup |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            if r["op"] != op:
                continue
            up = (f"{r['speedup']:.2f}x vs {r.get('ratio_vs')}"
                  if isinstance(r.get("speedup"), (int, float)) else "-")
            lines.append(f"| {r['case']} | {r['impl']} | {_fmt(r['fwd_ms'])} | "
                         f"{_fmt(r['fwd_bwd_ms'])} | {_fmt(r['peak_mem_mb'], '.1f')} | {up} |")
        lines.append("")
    errors = [f"- {r['op']} {r['case']} {r['impl']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["Errors:"] + errors
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Model level: one DiNAT training step, vitzoo's na2d vs the same model on FlexAttention
# ----------------------------------------------------------------------------------------------
class FlexNeighborhoodAttention2D(nn.Module):
    """``NeighborhoodAttention2D`` with its ``na2d`` call replaced by FlexAttention.

    Built from a vitzoo mixer and sharing its ``qkv`` / ``rpb`` / ``proj`` modules (same objects,
    same attribute names, so ``state_dict`` keys and weights are identical). The neighbourhood is
    a block mask from ``_neighbourhood_mods`` (NATTEN 0.17 clamped, dilated windows) and the
    relative position bias is added in the score_mod, after scaling, as na2d does. Padding of maps
    smaller than ``kernel_size * dilation`` follows the vitzoo module. ``attn_fn`` is
    ``flex_attention`` itself (eager, or inlined by an outer ``torch.compile`` of the model) or a
    ``torch.compile``d ``flex_attention`` (the attention call alone compiled).
    """

    def __init__(self, src: nn.Module, attn_fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        for name in ("dim", "num_heads", "head_dim", "scale", "kernel_size", "dilation",
                     "window_size"):
            setattr(self, name, getattr(src, name))
        self.qkv, self.proj, self.proj_drop = src.qkv, src.proj, src.proj_drop
        if src.rpb is None:
            self.register_parameter("rpb", None)
        else:
            self.rpb = src.rpb
        self.attn_fn = attn_fn

    def block_mask(self, H: int, W: int, device: torch.device):
        """The (cached) block mask of this mixer's neighbourhood on an ``H x W`` map."""
        key = (H, W, self.kernel_size, self.dilation, str(device))
        if key not in _BLOCK_MASKS:
            from torch.nn.attention.flex_attention import create_block_mask
            mask_mod, _ = _neighbourhood_mods(H, W, self.kernel_size, self.dilation, None)
            _BLOCK_MASKS[key] = create_block_mask(mask_mod, None, None, H * W, H * W,
                                                  device=device)
        return _BLOCK_MASKS[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H0, W0, C = x.shape
        pad_b, pad_r = max(0, self.window_size - H0), max(0, self.window_size - W0)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        H, W = H0 + pad_b, W0 + pad_r
        # [B, N, 3, heads, d] -> 3 x [B, heads, N, d] (FlexAttention is heads-first)
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        score_mod = None
        if self.rpb is not None:
            _, score_mod = _neighbourhood_mods(H, W, self.kernel_size, self.dilation, self.rpb)
        x = self.attn_fn(q, k, v, score_mod=score_mod, block_mask=self.block_mask(H, W, x.device),
                         scale=self.scale)
        x = x.transpose(1, 2).reshape(B, H, W, C)
        if pad_b or pad_r:
            x = x[:, :H0, :W0]
        return self.proj_drop(self.proj(x))


_BLOCK_MASKS: Dict[tuple, object] = {}
_COMPILED_FLEX: Dict[str, Callable[..., torch.Tensor]] = {}


def flex_attention_fn(compiled: bool) -> Callable[..., torch.Tensor]:
    """``flex_attention`` as is, or (one shared instance) under ``torch.compile(dynamic=False)``."""
    from torch.nn.attention.flex_attention import flex_attention
    if not compiled:
        return flex_attention
    if "flex" not in _COMPILED_FLEX:
        _COMPILED_FLEX["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX["flex"]


def flex_dense_emulation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod=None,
                         block_mask=None, scale: Optional[float] = None) -> torch.Tensor:
    """FlexAttention's semantics computed densely on plain autograd (CPU stand-in).

    FlexAttention has no backward on CPU, so the CPU plumbing run trains the swapped model
    through this instead: the same ``score_mod`` and ``block_mask.mask_mod``, evaluated on
    broadcast index grids over the full ``N x N`` score matrix. Not a performance baseline.
    """
    B, heads, N, D = q.shape
    Nk = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-2, -1)).float() * scale

    def idx(n: int, dim: int) -> torch.Tensor:
        shape = [1, 1, 1, 1]
        shape[dim] = n
        return torch.arange(n, device=q.device).view(shape)
    b, h, qi, ki = idx(B, 0), idx(heads, 1), idx(N, 2), idx(Nk, 3)
    if score_mod is not None:
        s = score_mod(s, b, h, qi, ki)
    if block_mask is not None:
        s = s.masked_fill(~block_mask.mask_mod(b, h, qi, ki), float("-inf"))
    return s.softmax(-1).to(v.dtype) @ v


def swap_to_flex(model: nn.Module, compile_attention: bool = False,
                 attn_fn: Optional[Callable[..., torch.Tensor]] = None) -> int:
    """Replace every ``NeighborhoodAttention2D`` in ``model`` (in place) by the FlexAttention one.

    ``attn_fn`` defaults to ``flex_attention`` (``torch.compile``d when ``compile_attention``).
    The new mixers share the old mixers' parameters, so deep-copy the model first to keep a
    vitzoo twin with the same weights. Returns the number of mixers swapped (0: nothing to do,
    which callers treat as an error).
    """
    from vitzoo.layers.neighborhood_attention import NeighborhoodAttention2D
    attn_fn = attn_fn or flex_attention_fn(compile_attention)
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, NeighborhoodAttention2D)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FlexNeighborhoodAttention2D(mod, attn_fn))
    return len(targets)


def _kernel_mode(mode: str):
    """Context manager: ``VITZOO_KERNELS=mode`` for the duration (read by na2d at every call)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        old = os.environ.get("VITZOO_KERNELS")
        os.environ["VITZOO_KERNELS"] = mode
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("VITZOO_KERNELS", None)
            else:
                os.environ["VITZOO_KERNELS"] = old
    return ctx()


# name -> (attention, what torch.compile wraps): 'attention' = the flex_attention call alone,
# 'model' = the whole model (forward + backward graphs; the optimizer step stays eager).
MODEL_VARIANTS: Dict[str, tuple] = {
    "vitzoo": ("vitzoo", "none"),
    "flex": ("flex", "attention"),
    "vitzoo_compiled": ("vitzoo", "model"),
    "flex_compiled": ("flex", "model"),
    "reference": ("reference", "none"),
}
# (flex variant, vitzoo variant it is compared with) for the flex/vitzoo ratios
MODEL_RATIOS = [("flex", "vitzoo"), ("flex_compiled", "vitzoo_compiled")]


def build_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """``timm.create_model(name)`` with a fixed seed (so every variant starts from one init)."""
    import timm
    import vitzoo  # noqa: F401  (registers the zoo)
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def check_flex_model(base: nn.Module, img_size: int, device: str, vitzoo_mode: str,
                     compile_attention: bool, batch: int = 2, tol: float = 1e-4) -> float:
    """Max |logits(flex-swapped) - logits(vitzoo)| in fp32, eval mode; raises if above ``tol``.

    Runs on ``batch`` images at the benchmark's image size (so it checks the very block masks that
    are timed), with TF32 off, the vitzoo model under ``VITZOO_KERNELS=vitzoo_mode`` and the flex
    model with the attention function the 'flex' row times (compiled on CUDA).
    """
    vit = copy.deepcopy(base).to(device).eval()
    flex = copy.deepcopy(base)
    if swap_to_flex(flex, compile_attention) == 0:
        raise RuntimeError("check_flex_model: the model has no NeighborhoodAttention2D to swap")
    flex = flex.to(device).eval()
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # eager flex_attention (CPU check) warns that it is slow: it is, and only used here
            warnings.filterwarnings("ignore",
                                    message=".*flex_attention called without torch.compile")
            with _kernel_mode(vitzoo_mode):
                want = vit(x)
            got = flex(x)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diff = (got.float() - want.float()).abs().max().item()
    if not diff <= tol:  # also catches NaN
        raise RuntimeError(
            f"FlexAttention-swapped model disagrees with the vitzoo model: max |logit diff| = "
            f"{diff:.3e} > tol {tol:.1e} (fp32, batch {batch}, {img_size}x{img_size}, "
            f"VITZOO_KERNELS={vitzoo_mode}). The flex timings would not compare the same "
            "computation; not timing.")
    return diff


def time_train_step(base: nn.Module, variant: str, batch: int, img_size: int, device: str,
                    dtype: torch.dtype, reps: int, warmup: int,
                    num_classes: int) -> Dict[str, object]:
    """Median ms of one training step (zero_grad, forward, CE loss, backward, AdamW step).

    The model is a fresh deep copy of ``base`` (identical weights for every variant) in train
    mode; forward + loss run under autocast(``dtype``) unless ``dtype`` is float32.
    """
    attention, compile_what = MODEL_VARIANTS[variant]
    on_cpu = device == "cpu"
    attn_fn = None
    if on_cpu and attention == "flex":
        # FlexAttention has no CPU backward: the CPU plumbing run trains the swapped model through
        # the dense emulation of the same mask/score mods (checked against na2d in the tests).
        attn_fn = flex_dense_emulation
        compile_what = "none" if compile_what == "attention" else compile_what
    model = copy.deepcopy(base)
    if attention == "flex" and swap_to_flex(model, compile_what == "attention", attn_fn) == 0:
        raise RuntimeError(f"{variant}: the model has no NeighborhoodAttention2D to swap")
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                            **({} if on_cpu else dict(fused=True)))
    step_model = torch.compile(model) if compile_what == "model" else model
    gen = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    mode = {"vitzoo": "reference" if on_cpu else "triton", "reference": "reference"}.get(
        attention, "auto")
    amp = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()
        return loss

    kernels = mode if attention != "flex" else (
        "flex mods, dense CPU emulation" if attn_fn is not None else "flex_attention")
    row: Dict[str, object] = dict(variant=variant, attention=attention, compiled=compile_what,
                                  kernels=kernels)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        with _kernel_mode(mode):
            t0 = time.perf_counter()
            loss = step()  # first step: compilation / autotuning happen here
            row["first_step_s"] = round(time.perf_counter() - t0, 2)
            ms = _time_ms(step, device, reps, max(0, warmup - 1))
        row["ms_per_step"] = round(ms, 3)
        row["img_per_s"] = round(batch * 1e3 / ms, 1)
        row["loss_finite"] = bool(torch.isfinite(loss).item())
        if device == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    except Exception as exc:  # noqa: BLE001 - a failing variant is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    del model, step_model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def model_ratios(rows: List[Dict[str, object]]) -> Dict[str, float]:
    """``flex ms / vitzoo ms`` for each compared pair that ran (> 1: vitzoo is faster)."""
    ms = {r["variant"]: r.get("ms_per_step") for r in rows}
    out = {}
    for flex, vit in MODEL_RATIOS:
        a, b = ms.get(flex), ms.get(vit)
        if isinstance(a, float) and isinstance(b, float) and b > 0:
            out[f"{flex}/{vit}"] = round(a / b, 3)
    return out


def _model_markdown(meta: Dict[str, object], rows: List[Dict[str, object]],
                    ratios: Dict[str, float]) -> str:
    lines = [f"# {meta['model']} training step: vitzoo NA vs FlexAttention ({meta['device_name']})",
             "", f"- date: {meta['date']}",
             f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}",
             f"- command: `{meta['command']}`",
             f"- batch {meta['batch']} at {meta['img_size']}x{meta['img_size']}, "
             + (f"{meta['dtype']} autocast" if meta["dtype"] != "float32" else "fp32")
             + ", AdamW; one step = zero_grad + forward + CE loss + "
             "backward + optimizer step; median ms over "
             f"{meta['reps']} steps after {meta['warmup']} warm-up steps.",
             "- compiled: `attention` = only the flex_attention call under torch.compile, the "
             "rest eager; `model` = torch.compile(model) (forward + backward; optimizer eager); "
             "`none` = eager.",
             f"- correctness guard: flex vs vitzoo logits, fp32, max abs diff "
             f"{meta['check_max_abs_diff']:.2e} (tol {meta['check_tol']:.0e}).",
             *(["- CPU run: plumbing check only; the flex rows use the dense emulation of the "
                "flex mods (FlexAttention has no CPU backward), so the timings mean nothing."]
               if meta["device"] == "cpu" else []), "",
             "| variant | attention | kernels | compiled | ms/step | img/s | first step s | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r.get("ms_per_step")
        lines.append("| " + " | ".join([
            r["variant"], r["attention"], r["kernels"], r["compiled"],
            f"{ms:.2f}" if isinstance(ms, float) else "err",
            str(r.get("img_per_s", "-")), str(r.get("first_step_s", "-")),
            str(r.get("peak_mem_gib", "-"))]) + " |")
    if ratios:
        lines += ["", "Ratios (flex ms / vitzoo ms; > 1 means vitzoo is faster):", ""]
        lines += [f"- {k}: {v:.2f}x" for k, v in ratios.items()]
    errors = [f"- {r['variant']}: {r['error']}" for r in rows if "error" in r]
    if errors:
        lines += ["", "Errors:"] + errors
    return "\n".join(lines) + "\n"


def run_model_step(args: argparse.Namespace, device: str, meta: Dict[str, object]) -> int:
    """The ``--model-step`` mode: correctness guard, then time each variant, write JSON + md."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        print("bench_kernels: this torch has no torch.nn.attention.flex_attention; cannot run "
              "--model-step")
        return 1
    on_cpu = device == "cpu"
    if on_cpu:
        dtype = torch.float32
        batch = args.batch or 2
        reps, warmup = (1, 1) if args.quick else (3, 1)
        default_variants = "vitzoo,flex"
    else:
        dtype = getattr(torch, args.dtype)
        batch = args.batch or (32 if args.quick else 128)
        reps, warmup = (5, 3) if args.quick else (20, 5)
        default_variants = "vitzoo,flex,vitzoo_compiled,flex_compiled"
    reps = args.reps or reps
    warmup = args.warmup if args.warmup is not None else warmup
    variants = [v.strip() for v in (args.model_variants or default_variants).split(",")
                if v.strip()]
    unknown = [v for v in variants if v not in MODEL_VARIANTS]
    if unknown:
        raise ValueError(f"--model-variants: unknown {unknown}; choose from "
                         f"{sorted(MODEL_VARIANTS)}")
    # Every mixer has its own rpb closure and the 4 stages have different shapes: the compiled
    # flex_attention recompiles per distinct guard set, more than dynamo's default limit of 8.
    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 256))

    base = build_model(args.model, **json.loads(args.model_kwargs or "{}"))
    num_classes = getattr(base, "num_classes", 1000)
    vitzoo_mode = "reference" if on_cpu else "triton"
    diff = check_flex_model(base, args.img_size, device, vitzoo_mode,
                            compile_attention=not on_cpu, batch=min(2, batch), tol=args.check_tol)
    print(f"correctness guard: flex vs vitzoo max |logit diff| = {diff:.2e} "
          f"(tol {args.check_tol:.0e})", flush=True)
    meta = dict(meta, mode="model-step", model=args.model,
                model_kwargs=json.loads(args.model_kwargs or "{}"), batch=batch,
                img_size=args.img_size, dtype=str(dtype).replace("torch.", ""), reps=reps,
                warmup=warmup, variants=variants, check_max_abs_diff=diff,
                check_tol=args.check_tol,
                params=sum(p.numel() for p in base.parameters()))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = f"{args.model.replace('vitzoo_', '')}_step_{device}_{stamp}"
    rows: List[Dict[str, Any]] = []
    ratios: Dict[str, float] = {}
    for variant in variants:
        row = time_train_step(base, variant, batch, args.img_size, device, dtype, reps, warmup,
                              num_classes)
        print(json.dumps(row), flush=True)
        rows.append(row)
        ratios = model_ratios(rows)
        # rewritten after every variant: a run killed by a time limit keeps what it measured
        (out_dir / f"{stem}.json").write_text(json.dumps(dict(meta, rows=rows, ratios=ratios),
                                                         indent=2))
        (out_dir / f"{stem}.md").write_text(_model_markdown(meta, rows, ratios))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x", flush=True)
    print(f"wrote {out_dir / stem}.json and .md")
    return 0 if all("error" not in r for r in rows) else 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer reps")
    p.add_argument("--allow-cpu", action="store_true",
                   help="without a GPU, run a tiny CPU plumbing run instead of failing")
    p.add_argument("--ops", default="all",
                   help="comma list of ops, or 'all' (present: "
                        f"{', '.join(kernel_bench.available_ops())})")
    p.add_argument("--batch", type=int, default=None,
                   help="batch (ops: each op's default; --model-step: 128, quick 32, CPU 2)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--backends", default=None,
                   help="impls for the neighborhood op (triton,reference,sdpa,flex)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    m = p.add_argument_group("model level (--model-step)")
    m.add_argument("--model-step", action="store_true",
                   help="time a full DiNAT training step: vitzoo NA vs FlexAttention swap")
    m.add_argument("--model", default="vitzoo_dinat_tiny", help="timm name of a NAT/DiNAT model")
    m.add_argument("--model-kwargs", default=None,
                   help="JSON kwargs for timm.create_model (e.g. a tiny test config)")
    m.add_argument("--img-size", type=int, default=224)
    m.add_argument("--model-variants", default=None,
                   help=f"comma list of {', '.join(MODEL_VARIANTS)} (default on CUDA: "
                        "vitzoo,flex,vitzoo_compiled,flex_compiled; on CPU: vitzoo,flex)")
    m.add_argument("--reps", type=int, default=None, help="timed steps (default 20, quick 5)")
    m.add_argument("--warmup", type=int, default=None,
                   help="warm-up steps incl. the compiling one (default 5, quick 3)")
    m.add_argument("--check-tol", type=float, default=1e-4,
                   help="max |logit diff| flex vs vitzoo (fp32) before timing")
    args = p.parse_args(argv)

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        if not args.allow_cpu:
            print("bench_kernels: --device cuda but no GPU available (torch.cuda.is_available() "
                  "is False); use --device cpu or --allow-cpu for a CPU plumbing run",
                  file=sys.stderr)
            return NO_GPU_EXIT
        device = "cpu"
    dtype = torch.float32 if device == "cpu" else getattr(torch, args.dtype)
    meta: Dict[str, Any] = dict(
        device=device,
        device_name=torch.cuda.get_device_name() if device == "cuda"
        else (platform.processor() or platform.machine()) + " (CPU)",
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **_versions(),
        command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])))
    if args.model_step:
        return run_model_step(args, device, meta)

    names = kernel_bench.select(args.ops)
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    meta.update(mode="ops", dtype=str(dtype).replace("torch.", ""), quick=args.quick)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = f"kernels_{device}_{stamp}"
    rows: List[Dict[str, Any]] = []
    ran: List[str] = []
    skipped: List[str] = []
    for name in names:
        # one op at a time, results rewritten after each: a killed run keeps the finished ops
        op_rows, op_ran, op_skipped = run_ops([name], device, dtype, args.quick, impls=backends,
                                              batch=args.batch)
        rows, ran, skipped = rows + op_rows, ran + op_ran, skipped + op_skipped
        meta.update(ops=ran, skipped_ops=skipped)
        (out_dir / f"{stem}.json").write_text(json.dumps(dict(meta, rows=rows), indent=2))
        (out_dir / f"{stem}.md").write_text(ops_markdown(meta, rows))
    if not ran:
        print(f"bench_kernels: no op module found for --ops {args.ops}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir / stem}.json and .md")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
