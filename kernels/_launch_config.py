"""Launch configurations (tiles, warps, pipeline stages) of every vitzoo Triton kernel, per GPU target.

Pure Python (no Triton, no GPU), so a tool can enumerate what each kernel would be compiled with
on any target:

    launch_config(op, kernel, target, dtype, fp32="ieee"|"tf32"|None, **shape) -> dict

* ``op``: ``"na"`` (na1d/na2d), ``"window"`` (window_attention) or ``"routed"`` (routed_attention).
* ``kernel``: ``"fwd"`` or ``"bwd"`` for ``na`` (``"bwd"`` = both ``_na_bwd_dkdv_kernel`` and
  ``_na_bwd_dq_kernel``) and ``window``; ``"fwd"``, ``"dq"`` or ``"dkdv"`` for ``routed``.
  :data:`KERNELS` names the Triton kernels each one launches.
* ``target``: compute capability as an int, ``major * 10 + minor`` (80 A100, 86 RTX 30xx, 89
  RTX 40xx / L4 / L40S, 90 H100/H200, 100 B200, 120 RTX 50xx). The runtime passes
  :func:`device_target` of the tensors' device.
* ``dtype``: ``torch.float32/float16/bfloat16`` or the strings ``"float32"``, ``"fp32"``,
  ``"bf16"``, ...; ``fp32``: the fp32 dot precision (``_precision.fp32_precision()`` when None).
* shape parameters, by op:
  ``na``: ``H, W, kernel_size=(kh, kw), dilation=(dh, dw), head_dim`` (a 1-D op is ``H=1``);
  ``window``: ``tokens`` (window height x width), ``head_dim``;
  ``routed``: ``w2`` (tokens per region), ``topk``, ``dqk``, ``dv`` (head dims of q/k and v).

Returned keys are the kernels' constexprs plus ``num_warps`` and ``num_stages``: ``na`` ->
``TH, TW, RPC, CW, BLOCK_D``; ``window`` -> ``BLOCK, NB, BLOCK_D`` (and ``WPP``, windows per
program, in the forward); ``routed`` -> ``BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV``.

Why per target: shared memory per block is ~99 KB on sm_86/sm_89/sm_120 against 163 KB on
sm_80/sm_87 and 227 KB on sm_90/sm_100 (:data:`SMEM_BYTES`), so pipeline stages (each holds one
chunk of K and V) are cut on the small parts. fp32 operands take twice the registers and shared
memory of 16-bit ones, and IEEE fp32 dots run on FMA units with far more live registers than
tensor-core dots, so they get smaller tiles. Every table entry was chosen from ahead-of-time
compiles (registers, spills, shared memory; ``tests/triton_aot.py``); none has been timed on a GPU.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple, Union

__all__ = ["launch_config", "device_target", "TARGETS", "SMEM_BYTES", "KERNELS",
           "DEFAULT_TARGET", "dtype_name"]

#: targets the tables are made for (compute capability major * 10 + minor)
TARGETS = (80, 86, 89, 90, 100, 120)
#: opt-in shared memory per block, bytes (CUDA programming guide, "compute capabilities")
SMEM_BYTES = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448,
              103: 232448, 120: 101376, 121: 101376}
#: target used when the tensors are not on a GPU (interpreter runs, launch capture) and
#: ``VITZOO_KERNEL_TARGET`` is unset
DEFAULT_TARGET = 80
#: the Triton kernels behind each (op, kernel)
KERNELS = {
    ("na", "fwd"): ("_na_fwd_kernel",),
    ("na", "bwd"): ("_na_bwd_dkdv_kernel", "_na_bwd_dq_kernel"),
    ("window", "fwd"): ("_win_fwd_one_kernel", "_win_fwd_kernel"),
    ("window", "bwd"): ("_win_bwd_one_kernel", "_win_bwd_blocked_kernel"),
    ("routed", "fwd"): ("_routed_fwd_kernel",),
    ("routed", "dq"): ("_routed_bwd_dq_kernel",),
    ("routed", "dkdv"): ("_routed_bwd_dkdv_kernel",),
}

_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32",
           "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def dtype_name(dtype) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"`` for a torch dtype or a name."""
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"launch_config: dtype {dtype!r} is not float32/float16/bfloat16")
    return _DTYPES[name]


def _target_override() -> Optional[int]:
    value = os.environ.get("VITZOO_KERNEL_TARGET", "").strip().lower().replace("sm_", "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"VITZOO_KERNEL_TARGET={value!r} must be a compute capability "
                         "such as 80, 89 or sm_90") from None


def device_target(device=None) -> int:
    """Compute capability (``major * 10 + minor``) whose tables a launch on ``device`` uses.

    ``VITZOO_KERNEL_TARGET`` overrides it (launch capture for another GPU); CPU tensors (the
    Triton interpreter) use :data:`DEFAULT_TARGET`.
    """
    forced = _target_override()
    if forced is not None:
        return forced
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return DEFAULT_TARGET
    import torch
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _small_smem(target: int) -> bool:
    """The ~99 KB-per-block parts (sm_86, sm_89, sm_120; unknown targets count as small)."""
    return SMEM_BYTES.get(target, 101376) < 160 * 1024


def _fp32_mode(dtype: str, fp32: Optional[str]) -> str:
    """``"16"`` for 16-bit inputs, else the fp32 dot precision (``"ieee"`` or ``"tf32"``)."""
    if dtype != "float32":
        return "16"
    if fp32 is None:
        from ._precision import fp32_precision
        fp32 = fp32_precision()
    return "ieee" if fp32 == "ieee" else "tf32"   # tf32x3 has tf32's shapes


def launch_config(op: str, kernel: str, target: int, dtype: Union[str, object],
                  fp32: Optional[str] = None, **shape) -> Dict[str, int]:
    """Launch meta-parameters of one kernel of ``op`` on ``target`` (see the module doc)."""
    key = (op, kernel)
    if key not in KERNELS:
        raise ValueError(f"launch_config: unknown (op, kernel) {key}; known: {sorted(KERNELS)}")
    mode = _fp32_mode(dtype_name(dtype), fp32)
    target = int(target)
    if op == "na":
        return _na(kernel, target, mode, **shape)
    if op == "window":
        return _window(kernel, target, mode, **shape)
    return _routed(kernel, target, mode, **shape)


# ----------------------------------------------------------------------------------------------
# Neighborhood attention
# ----------------------------------------------------------------------------------------------
def na_tile_override() -> Optional[Tuple[int, int]]:
    """``VITZOO_NA_TILE=RxC`` (tests only): force small tiles so tiny maps span several tiles."""
    spec = os.environ.get("VITZOO_NA_TILE", "").strip().lower()
    if not spec:
        return None
    try:
        th, tw = (int(x) for x in spec.split("x"))
    except ValueError:
        raise ValueError(f"VITZOO_NA_TILE={spec!r} must look like '4x4'") from None
    if th < 1 or tw < 1 or th & (th - 1) or tw & (tw - 1) or th * tw < 16:
        raise ValueError(f"VITZOO_NA_TILE={spec!r}: both sides must be powers of two with "
                         "rows * cols >= 16 (tl.dot needs M >= 16)")
    return th, tw


def _na(kernel: str, target: int, mode: str, H: int, W: int, kernel_size: Sequence[int],
        dilation: Sequence[int], head_dim: int) -> Dict[str, int]:
    """NA tiles: ``TH x TW`` queries (keys in dk/dv) of one dilation group, walked in chunks of
    ``RPC`` rows x ``CW`` columns. Every dot has M = TH*TW, N = RPC*CW, K = BLOCK_D >= 16.

    * groups of at most 8 x 8: one 8x8 tile per group, one 64-slot chunk (two at head_dim 64);
    * 1-D maps: 1 x 64 tiles (1 x 32 at head_dim 128);
    * otherwise 8x8 tiles, 16-column chunks (32 when ``TW + k - 1 > 16``), 4/2/1 rows per chunk
      for head_dim <= 32 / 64 / 128 (2/2/1 in the backward);
    * fp32 on tensor cores: half the rows per chunk, and in the backward chunks of at most 16
      columns (8 from head_dim 64); IEEE fp32: 4x8 tiles, 8-column chunks and 8 warps (FMA dots
      keep whole operand tiles in registers);
    * ~99 KB parts: one pipeline stage fewer where a chunk of K and V is large.
    """
    ks, dil = tuple(kernel_size), tuple(dilation)
    block_d = max(16, _pow2(head_dim))
    n_h, n_w = -(-H // dil[0]), -(-W // dil[1])
    override = na_tile_override()
    if override is not None:
        th, tw = override
        if H == 1:
            th, tw = 1, th * tw
        fwd = dict(TH=th, TW=tw, RPC=2 if th > 1 else 1, CW=8 if th > 1 else 16)
        bwd = dict(fwd, RPC=max(2, 16 // th)) if th > 1 else fwd   # TH*RPC >= 16: d(rpb) bins
    elif H == 1:
        tw = 32 if block_d >= 128 else 64
        fwd = dict(TH=1, TW=tw, RPC=1, CW=64)
        bwd = dict(TH=1, TW=tw, RPC=1, CW=32)
    elif n_h <= 8 and n_w <= 8:
        fwd = dict(TH=8, TW=8, RPC=4 if block_d == 64 else 8, CW=8)
        bwd = dict(TH=8, TW=8, RPC=2 if block_d >= 128 else 4, CW=8)   # 64 x 64 tiles spill
    else:
        wide = 8 + ks[1] - 1 > 16
        cw = 32 if wide else 16
        rpc_f = {16: 4, 32: 4, 64: 2}.get(block_d, 1)
        rpc_b = 1 if block_d >= 128 else 2
        if wide:
            rpc_f, rpc_b = max(1, rpc_f // 2), max(1, rpc_b // 2)
        fwd = dict(TH=8, TW=8, RPC=rpc_f, CW=cw)
        bwd = dict(TH=8, TW=8, RPC=rpc_b, CW=cw)
    cfg = {"fwd": dict(fwd, BLOCK_D=block_d, num_warps=8 if block_d >= 128 else 4, num_stages=3),
           "bwd": dict(bwd, BLOCK_D=block_d, num_warps=8 if block_d >= 64 else 4,
                       num_stages=2 if block_d <= 64 else 3)}[kernel]
    if mode == "ieee" and H > 1 and override is None:
        # backward at head_dim 128: 2 rows per chunk (4 spilled 416 B on sm_80 at k=13)
        rpc = 2 if kernel == "fwd" or block_d >= 128 else 4
        cfg.update(TH=4, TW=8, RPC=rpc, CW=8, num_warps=8)
    elif mode != "16":
        floor = -(-16 // cfg["CW"])                                      # N >= 16
        if kernel == "bwd" and cfg["TH"] > 1:
            floor = max(floor, -(-16 // cfg["TH"]))                      # d(rpb) bins: TH*RPC >= 16
        cfg["RPC"] = max(cfg["RPC"] // 2, floor)
        if cfg["TH"] > 1 and override is None:
            # fp32 tiles: narrower chunks (sm_80 spilled 68 B in dq at k=11, 24 B in dk/dv at
            # head_dim 64, 40 B in the forward at k=13 / head_dim 128)
            if kernel == "bwd":
                cfg["CW"] = 8 if block_d >= 64 else min(cfg["CW"], 16)
                cfg["RPC"] = max(cfg["RPC"], -(-16 // cfg["CW"]), -(-16 // cfg["TH"]))
                cfg["num_stages"] = 2
            elif block_d >= 128:
                cfg["CW"] = min(cfg["CW"], 16)
                cfg["RPC"] = max(cfg["RPC"], -(-16 // cfg["CW"]))
                if _small_smem(target):   # sm_89's ptxas held 8 warps to 128 regs: 8 B spilled
                    cfg["num_warps"] = 4
    if kernel == "fwd" and mode == "16" and target >= 120 and block_d >= 128:
        cfg["num_warps"] = 4        # sm_120's ptxas held 8 warps to 128 regs: 32 B spilled at
                                    # k = 13 (188 regs at 4 warps, none)
    if kernel == "bwd" and override is None and H > 1:
        if mode == "16" and target < 90 and not _small_smem(target) and cfg["RPC"] == 1 \
                and cfg["CW"] == 32 and block_d <= 32:
            cfg["num_stages"] = 1   # sm_80's ptxas spilled 8 B in dK/dV at k = 11 with 2 stages
        elif mode == "tf32" and target >= 120 and block_d <= 32 and cfg["CW"] >= 16:
            cfg["num_stages"] = 1   # sm_120's ptxas spilled 8 B in dQ at k = 7 with 2 stages
    if _small_smem(target):
        elem = 2 if mode == "16" else 4
        chunk = cfg["RPC"] * cfg["CW"] * cfg["BLOCK_D"] * elem * 2       # K and V of one chunk
        if chunk * cfg["num_stages"] > 64 * 1024:
            cfg["num_stages"] = max(1, (64 * 1024) // chunk)
    return cfg


# ----------------------------------------------------------------------------------------------
# Window attention
# ----------------------------------------------------------------------------------------------
def window_block_override() -> Optional[int]:
    """``VITZOO_WINDOW_BLOCK`` (tests only): force a block size."""
    value = os.environ.get("VITZOO_WINDOW_BLOCK", "").strip()
    return int(value) if value else None


def _window(kernel: str, target: int, mode: str, tokens: int, head_dim: int,
            block: Optional[int] = None) -> Dict[str, int]:
    """Window tiles: a window's tokens in ``NB`` blocks of ``BLOCK`` (49 -> one block of 64).

    Forward: one block of up to 64 tokens (32 at head_dim > 64), else ``NB`` such blocks;
    ``WPP`` windows per program share the bias tile. Backward: the one-block kernel up to 64
    tokens at head_dim <= 32 (every Swin window 7), else blocks of 32. Every dot dim >= 16.
    """
    block_d = max(16, _pow2(head_dim))
    block = block if block is not None else window_block_override()
    forced = block
    if block is None:
        fits = max(16, _pow2(tokens))
        if kernel == "bwd":
            block = fits if fits <= 64 and head_dim <= 32 else min(fits, 32)
        else:
            block = min(fits, 64 if head_dim <= 64 else 32)
    nb = -(-tokens // block)
    if kernel == "fwd":
        cfg = dict(BLOCK=block, NB=nb, BLOCK_D=block_d, WPP=4, num_warps=4, num_stages=2)
        if mode == "ieee" or (mode == "tf32" and block_d >= 64):
            cfg["num_warps"] = 8    # fp32 at 4 warps spilled: 764 B (IEEE, window 7, sm_80)
            if block_d >= 64 and forced is None and block > 32:
                cfg.update(BLOCK=32, NB=-(-tokens // 32))
        if mode == "tf32" and target >= 120 and block_d <= 32 and cfg["NB"] > 1 and forced is None:
            cfg["num_stages"] = 1   # sm_120's ptxas spilled 48 B at window 12 with 2 stages
    else:
        cfg = dict(BLOCK=block, NB=nb, BLOCK_D=block_d, num_warps=8, num_stages=1)
        if forced is None and ((mode == "ieee" and (block_d >= 128 or
                                                    (target >= 90 and tokens > 64))) or
                               (_small_smem(target) and block_d >= 64 and tokens > 64)):
            # IEEE at head_dim 128 spilled 652 B at blocks of 32 (sm_80), IEEE at window 12
            # 48 B on sm_90; sm_89's ptxas spilled 32 B at window 12 / head_dim 64 in bf16
            # where sm_80's did not
            cfg.update(BLOCK=16, NB=-(-tokens // 16))
        if mode == "16" and target >= 90 and block_d >= 64 and tokens <= 64 and forced is None:
            cfg["num_warps"] = 4    # sm_90's ptxas held 8 warps to 128 regs: 8 B spilled
        if mode == "ieee" and target >= 90 and block_d <= 32 and cfg["BLOCK"] == 16 \
                and forced is None:
            cfg["num_warps"] = 4    # 8 warps were held to 80 regs at window 12: 36 / 24 / 32 B
                                    # spilled on sm_90 / sm_100 / sm_120; 4 warps: <= 128, none
    if _small_smem(target) and mode != "16" and block_d >= 64:
        cfg["num_stages"] = 1       # fp32 K/V stages of a 64 x 64 tile overflow ~99 KB
    return cfg


# ----------------------------------------------------------------------------------------------
# Routed attention
# ----------------------------------------------------------------------------------------------
def _clamp_pow2(n: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, _pow2(max(1, n))))


def _routed(kernel: str, target: int, mode: str, w2: int, topk: int, dqk: int, dv: int
            ) -> Dict[str, int]:
    """Routed tiles: forward/dQ programs take ``BLOCK_M`` query tokens of one region (>= 16 rows)
    and walk the ``topk * w2`` routed keys in ``BLOCK_N``-key blocks; dK/dV programs take one
    key region's ``BLOCK_N`` tokens and walk 64-row blocks of the query regions routed to it."""
    bd = dict(BLOCK_DQK=_clamp_pow2(dqk, 16, 128), BLOCK_DV=_clamp_pow2(dv, 16, 128))
    wide = max(bd.values()) >= 128
    if kernel == "dkdv":
        bn = _clamp_pow2(w2)
        # 64 stacked query rows; 32 for TF32 and head_dim 128 (44 B spilled in TF32 on sm_80,
        # 180 B at head_dim 128 on sm_90), 16 for IEEE at head_dim 128 (140 B at 32)
        bm = 16 if (mode == "ieee" and wide) else 32 if (mode == "tf32" or wide) else 64
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, **bd, num_warps=8 if bn >= 64 else 4, num_stages=2)
        if mode == "tf32" and target >= 100 and not wide:
            cfg["num_warps"] = 4        # sm_100/sm_120 spilled 16/92 B at 8 warps (ptxas cap)
        if mode == "ieee" and target >= 90:
            # sm_90's ptxas held IEEE dK/dV to 64-128 registers and spilled 2.6-3.9 KB at
            # 64-row query blocks; 32 rows and 8 warps (32-key tiles at head_dim 128) fit
            cfg.update(BLOCK_M=32, num_warps=8, BLOCK_N=32 if wide else bn)
        elif mode == "ieee" and _small_smem(target) and bn >= 64 and not wide:
            cfg["BLOCK_M"] = 32         # sm_86/sm_89's ptxas spilled 2.8 KB at 64 rows x 64 keys
    else:
        bm = _clamp_pow2(w2)
        bn = _clamp_pow2(topk * w2)
        if mode == "ieee" and wide:     # FMA dots on 128-wide rows: 48 B spilled at 64 x 32
            bm, bn = min(bm, 32), 32
        # fp32 operands of a 64-row tile: 8 warps (4 spilled 332 B / 736 B on sm_80 in IEEE)
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, **bd, num_warps=8 if mode != "16" and bm >= 64 else 4,
                   num_stages=2)
        if mode == "ieee" and wide and target >= 90 and kernel == "fwd":
            cfg["num_warps"] = 8        # 912 B spilled at 4 warps on sm_90
    if _small_smem(target) and (wide or mode != "16") and kernel != "fwd":
        cfg["num_stages"] = 1
        if wide and mode != "16":
            # fp32 at head_dim 128 on ~99 KB parts: 131 KB (dQ) and 115 KB (dK/dV) of shared
            # memory at sm_80's tiles; smaller tiles fit (96 KB / 80 KB on sm_89, no spills)
            if kernel == "dq":
                cfg["BLOCK_N"] = 32
            else:
                cfg.update(BLOCK_M=32, BLOCK_N=32, num_warps=4)
    return cfg
