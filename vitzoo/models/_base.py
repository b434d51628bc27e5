"""timm's model contract, written once for every zoo family.

`ZooModel` holds what every backbone needs (device/dtype construction, input checks, the
classifier API, weight-decay exclusions, grad checkpointing). `HierarchicalBackbone` adds the
stem -> stages -> norm -> head layout of 4-stage models, `IsotropicBackbone` the
patch-embed -> tokens -> blocks -> norm -> head layout of ViT-like models. A family subclasses
one of them, builds its parts in `__init__` and calls `init_contract(...)`; feature_info,
forward_intermediates, pruning, group_matcher and features_only then work without more code.
"""

import contextlib
import fnmatch
import functools
import sys
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch.utils.checkpoint import checkpoint

from ._timm_features import resolve_feature_cls

__all__ = [
    "ZooModel", "HierarchicalBackbone", "IsotropicBackbone", "ZooFeatureGetterNet", "build_zoo_model", "factory_defaults",
    "to_zoo_layout",
]


def _is_tracing() -> bool:
    """True under torchscript or fx symbolic tracing, where python-side shape checks can't run."""
    if torch.jit.is_scripting():
        return True
    is_symbolic = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    return bool(is_symbolic()) if is_symbolic is not None else False


@contextlib.contextmanager
def factory_defaults(device: Any = None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Make tensor factories default to `device` and `dtype` while a model is being built.

    This is how every zoo model honours `device=`/`dtype=` constructor arguments without each
    family threading them through every layer: a model built on 'meta' has every tensor there.
    """
    if device is None and dtype is None:
        yield
        return
    prev_dtype = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        if dtype is not None:
            if not dtype.is_floating_point:
                raise TypeError(f"dtype must be a floating point type, got {dtype}")
            torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(prev_dtype)


def _checkpoint_filter_of(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    """The family's `checkpoint_filter_fn` (set by `build_zoo_model`, else the class's module's)."""
    fn = model.__dict__.get("_zoo_checkpoint_filter")
    if fn is None:
        fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return fn


def _adapt_foreign_layout(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """`load_state_dict` pre-hook: convert a timm or official key layout to the zoo's, in place.

    Every loading path ends in `load_state_dict` (timm's `checkpoint_path=`, `load_checkpoint`,
    `--resume`/`--initial-checkpoint`, `tools/validate.py --checkpoint`), so recognising the layout
    here makes all of them accept what `pretrained=True` accepts. A state dict whose keys are all
    the zoo's own is left untouched; otherwise the family's `checkpoint_filter_fn` converts it (it
    also unwraps `{'model': ...}` / `{'state_dict': ...}` containers of official files).
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    own = {prefix + k for k in module.state_dict().keys()}
    if not keys or all(k in own for k in keys):
        return
    filter_fn = _checkpoint_filter_of(module)
    if filter_fn is None:
        return
    sub = {k[len(prefix):]: state_dict.pop(k) for k in keys}
    for wrapper in ("model", "state_dict", "model_ema", "state_dict_ema"):
        if len(sub) == 1 and isinstance(sub.get(wrapper), dict):
            sub = sub[wrapper]
    sub = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sub.items()}
    if not all(k in own for k in (prefix + k for k in sub)):
        sub = filter_fn(sub, module)
    state_dict.update({prefix + k: v for k, v in sub.items()})


def unwrap_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The weights inside a training checkpoint (`model` / `state_dict` entries, DDP `module.` prefix)."""
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def to_zoo_layout(model: nn.Module, state_dict: dict) -> dict:
    """`state_dict` in `model`'s own key layout: what `model.load_state_dict` would load after its
    pre-hook converted a timm or official layout (for callers that check keys before loading)."""
    out = dict(state_dict)
    if isinstance(model, ZooModel):
        _adapt_foreign_layout(model, out, "")
    return out


class ZooModel(nn.Module):
    """Base of every zoo model: what timm's contract asks of any backbone.

    Subclasses set, in `__init__`: `in_chans`, `num_classes`, `global_pool`, `num_features`,
    `head_hidden_size`, `head` (a module with `.fc`, `reset(num_classes, pool_type)` and
    `forward(x, pre_logits=False)`), and may override the class attributes below.
    """

    #: image height and width must be multiples of this (1: any size)
    input_divisor: int = 1
    #: smallest image side the model accepts
    min_input_size: int = 1
    #: parameter-name patterns (fnmatch on the leaf name) excluded from weight decay
    no_weight_decay_keys: tuple[str, ...] = ()
    #: layout of `features_only` maps by default and from feature_cls 'list'/'dict'/'hook': NCHW, or
    #: NHWC where timm's twin gives NHWC (Swin); `feature_cls='getter'` always gives NCHW, as timm's
    features_fmt: str = "NCHW"

    @torch.jit.ignore
    def timm_feature_view(self) -> nn.Module:
        """What timm's list / dict / hook feature wrappers walk (children by name, `feature_info`): the
        model itself; a family whose timm twin names its modules otherwise returns a renamed view."""
        return self

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give every subclass `device=`/`dtype=` keyword arguments, applied while it builds."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_zoo_wrapped", False):
            return

        @functools.wraps(init)
        def __init__(self, *args: Any, device: Any = None, dtype: torch.dtype | None = None, **kw: Any) -> None:
            with factory_defaults(device, dtype):
                init(self, *args, **kw)
            if not getattr(self, "_zoo_layout_hook", False):
                self.register_load_state_dict_pre_hook(_adapt_foreign_layout)
                self._zoo_layout_hook = True

        __init__._zoo_wrapped = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    # ---- input checks -------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem when `x` is not an image batch this model takes.

        Callers guard it with `if not torch.jit.is_scripting()` so TorchScript compiles around it.
        """
        if _is_tracing():
            return
        name = type(self).__name__
        if x.ndim != 4:
            raise ValueError(f"{name} expects an image batch of shape [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} was built for {self.in_chans} input channels but the input has {x.shape[1]} "
                f"(shape {tuple(x.shape)}); create the model with in_chans={x.shape[1]}"
            )
        self.check_img_size(int(x.shape[-2]), int(x.shape[-1]))

    def check_img_size(self, height: int, width: int) -> None:
        """Families override this when they take a narrower set of image sizes."""
        name = type(self).__name__
        if height < self.min_input_size or width < self.min_input_size:
            raise ValueError(
                f"{name} needs images of at least {self.min_input_size}x{self.min_input_size}, got {height}x{width}"
            )
        d = self.input_divisor
        if height % d or width % d:
            raise ValueError(f"{name} needs image height and width divisible by {d}, got {height}x{width}")

    # ---- classifier ------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier with `num_classes` outputs; pooling is kept unless `global_pool` is given."""
        ref = next(self.parameters(), None)
        with factory_defaults(*((ref.device, ref.dtype) if ref is not None else (None, None))):
            self.head.reset(num_classes, pool_type=global_pool)
        self.head.train(self.head.training)  # new layers follow the model's train/eval mode
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool

    def _prune_head(self) -> None:
        """timm's pruned head: no classifier, no pooling, and none of the head's own layers.

        A head's norm / hidden layer (MetaFormer, SpectFormer-H) is sized for the final features
        and would take no gradient in a feature extractor (DDP fails on that), so it goes, as
        timm's `reset_classifier(..., reset_other=True)` does; a head may define `prune(width)`.
        `reset_classifier(n, 'avg')` afterwards pools the (maybe narrower) `num_features`.
        """
        prune = getattr(self.head, "prune", None)
        if prune is not None:
            prune(self.num_features)
        elif hasattr(self.head, "in_features"):
            self.head.in_features = self.num_features
        self.reset_classifier(0, "")
        self.head_hidden_size = self.num_features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- weight init ---------------------------------------------------------------------------
    @torch.jit.ignore
    @torch.no_grad()
    def init_weights(self, needs_reset: bool = True) -> None:
        """Initialise every parameter and computed buffer in place, as the constructor does.

        How timm materialises large models (FSDP): build on 'meta', `to_empty()`, then this. Each
        module's own `reset_parameters()` runs first (descendants before ancestors, so a layer that
        sets its sublayers wins), then `init_non_persistent_buffers()` (index tables, bias caches,
        as timm names it), then the family's `_init_family_weights()` (the constructor's init).
        """
        if needs_reset:
            for m in reversed(list(self.modules())):
                if m is not self and callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        for m in self.modules():
            if callable(getattr(m, "init_non_persistent_buffers", None)):
                m.init_non_persistent_buffers()
        self._init_family_weights()

    def _init_family_weights(self) -> None:
        """The family's own init on top of the layers' (constructors call it too); default: none."""

    # ---- optimisation helpers ----------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        keys = self.no_weight_decay_keys
        return {
            n for n, _ in self.named_parameters()
            if any(fnmatch.fnmatch(n.rsplit(".", 1)[-1], k) or fnmatch.fnmatch(n, k) for k in keys)
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable
        self.grad_checkpointing = enable


def _to_fmt(x: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    if src == dst:
        return x
    if src == "NHWC" and dst == "NCHW":
        return x.permute(0, 3, 1, 2).contiguous()
    if src == "NCHW" and dst == "NHWC":
        return x.permute(0, 2, 3, 1).contiguous()
    raise ValueError(f"cannot convert features from {src} to {dst}")


class HierarchicalBackbone(ZooModel):
    """stem -> stages (vitzoo.layers.Stage) -> norm -> head, for 4-stage pyramids.

    A subclass builds `self.stem`, `self.stages` (nn.Sequential of Stage), `self.norm`
    (applied to the last stage's output; nn.Identity if none) and `self.head`, then calls
    `init_contract`. `output_fmt` is the layout stages produce ('NCHW' or 'NHWC').
    """

    output_fmt: str = "NCHW"

    def init_contract(
            self,
            *,
            in_chans: int,
            num_classes: int,
            global_pool: str,
            dims: Sequence[int],
            reductions: Sequence[int],
            head_hidden_size: int | None = None,
    ) -> None:
        """Record what timm reads off a model: feature_info, num_features, head size, ..."""
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = int(dims[-1])
        self.head_hidden_size = int(head_hidden_size or dims[-1])
        self.feature_info = [
            dict(num_chs=int(d), reduction=int(r), module=f"stages.{i}")
            for i, (d, r) in enumerate(zip(dims, reductions))
        ]
        self.input_divisor = max(self.input_divisor, int(reductions[-1]))
        self.grad_checkpointing = False

    def _init_family_weights(self) -> None:
        """Linear trunc_normal(0.02) / LayerNorm (1, 0), the transformer pyramids' init; families override."""
        from ._init import init_linear_layernorm
        self.apply(init_linear_layernorm)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        else:
            self.scripted_input_rule(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def scripted_input_rule(self, x: torch.Tensor) -> None:
        """Under TorchScript, where `check_input` is compiled out: what a family must still decide per input
        size (Swin's window rule). Nothing here."""
        pass

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at `indices` (last n if int, all if None) in `output_fmt`, and the final features."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        if not torch.jit.is_scripting():
            self.check_input(x)
        else:
            self.scripted_input_rule(x)
        num_stages = len(self.stages)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]

        intermediates = []
        x = self.stem(x)
        last = -1
        for last, stage in enumerate(stages):
            x = stage(x)
            if last in take_indices:
                x_inter = self.norm(x) if norm and last == num_stages - 1 else x
                intermediates.append(_to_fmt(x_inter, self.output_fmt, output_fmt))
        if intermediates_only:
            return intermediates
        if last == num_stages - 1:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last index taken (and the norm/head if asked).

        The final norm is sized for the last stage, so it goes too when stages are cut.
        """
        num_stages = len(self.stages)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        prune_end = max_index < num_stages - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:  # like timm: a head sized for the cut stages goes with them
            self._prune_head()
        return take_indices


class TokenHead(nn.Module):
    """Classifier over a token sequence: pool ('token' = first token, 'avg' = mean of patch tokens)."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "token",
                 num_prefix_tokens: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        if pool_type not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {pool_type!r}")
        self.in_features = in_features
        self.pool_type = pool_type
        self.num_prefix_tokens = num_prefix_tokens
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            if pool_type not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {pool_type!r}")
            self.pool_type = pool_type
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "token":
            x = x[:, 0]
        elif self.pool_type == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class _DenseTokens:
    """Grid positions of the image tokens while blocks drop some (EViT), to give dense feature maps.

    `pos[b, j]` is the grid cell of image token j (a fused token gets the spare cell H*W, cut at
    the end); `values` holds what each cell last was, so dropped cells keep their value.
    """

    def __init__(self, x: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> None:
        B, N, C = x.shape
        self.p = num_prefix_tokens
        self.cells = grid[0] * grid[1]
        self.pos = torch.arange(N - self.p, device=x.device).expand(B, -1)
        self.values = x.new_zeros(B, self.cells + 1, C)

    def _scatter(self, values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        idx = self.pos.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        return values.scatter(1, idx, tokens[:, self.p:])

    def drop(self, kept: torch.Tensor | None, at_reorg: torch.Tensor, out: torch.Tensor) -> None:
        """After a block: `kept` image-token indices (None: none dropped), tokens at the drop, block output."""
        if kept is None:
            return
        self.values = self._scatter(self.values, at_reorg)  # every token's value when the block dropped some
        self.pos = self.pos.gather(1, kept)
        extra = out.shape[1] - self.p - kept.shape[1]
        if extra > 0:  # a fused token follows the kept ones: the spare cell
            self.pos = torch.cat([self.pos, torch.full_like(self.pos[:, :1], self.cells).expand(-1, extra)], dim=1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (prefix + surviving tokens) -> prefix + one token per grid cell."""
        cells = self._scatter(self.values, x)[:, :self.cells]
        return torch.cat([x[:, :self.p], cells], dim=1)


@register_notrace_function  # resamples only when the grid differs from the built one: an FX leaf
def resample_pos_embed_for_grid(pos_embed: torch.Tensor, grid_h: int, grid_w: int, built_h: int, built_w: int,
                                num_prefix_tokens: int) -> torch.Tensor:
    """`pos_embed` (prefix tokens first) for a `grid_h x grid_w` patch grid: itself at the built grid
    (so outputs there are bit-for-bit those of a fixed-size model), else timm's bicubic resample."""
    if grid_h == built_h and grid_w == built_w:
        return pos_embed
    return resample_abs_pos_embed(pos_embed, [grid_h, grid_w], [built_h, built_w],
                                  num_prefix_tokens=num_prefix_tokens, verbose=False)


class IsotropicBackbone(ZooModel):
    """patch_embed -> [cls token, pos embed] -> blocks -> norm -> head, for ViT-like models.

    A subclass builds `self.patch_embed` (timm PatchEmbed or alike, with `.grid_size` and
    `.patch_size`), optional `self.cls_token` / `self.pos_embed` parameters (None if absent),
    `self.pos_drop`, `self.blocks` (nn.Sequential), `self.norm` and `self.head` (TokenHead),
    then calls `init_contract`. Tokens are [B, N, C]; intermediates come back as NCHW maps of
    the patch tokens when their count still fills the grid, else as NLC.
    """

    #: when set, the image must be exactly this (H, W): the model has an absolute position embedding
    fixed_input_size: tuple[int, int] | None = None

    def init_contract(
            self,
            *,
            in_chans: int,
            num_classes: int,
            global_pool: str,
            embed_dim: int,
            num_prefix_tokens: int,
            reduction: int,
            fixed_input_size: tuple[int, int] | None = None,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
    ) -> None:
        """`dynamic_img_size` / `dynamic_img_pad`: timm's ViT options. Dynamic size: the absolute position
        embedding is resampled (bicubic, timm's `resample_abs_pos_embed`) for every input whose patch grid
        is not the built one, so any multiple of `reduction` works (it overrides `fixed_input_size`); with
        dynamic pad too, the patch embed pads the image right/bottom to the next multiple (the grid is
        `ceil(H / reduction)`), so any size works. `self.patch_embed` must pad the same way (timm's
        PatchEmbed(dynamic_img_pad=True)). Neither: the image must be `fixed_input_size` (if set)."""
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = int(embed_dim)
        self.num_prefix_tokens = num_prefix_tokens
        self.patch_reduction = int(reduction)
        self.dynamic_img_size = bool(dynamic_img_size)
        self.dynamic_img_pad = bool(dynamic_img_pad) and self.dynamic_img_size
        self.fixed_input_size = None if self.dynamic_img_size else fixed_input_size
        if not self.dynamic_img_pad:
            self.input_divisor = max(self.input_divisor, reduction)
        self.feature_info = [
            dict(num_chs=int(embed_dim), reduction=reduction, module=f"blocks.{i}") for i in range(len(self.blocks))
        ]
        self.grad_checkpointing = False

    def _init_family_weights(self) -> None:
        """ViT's init: position embedding trunc_normal(0.02), CLS token normal(1e-6), Linear/LayerNorm as ViT."""
        from ._init import init_linear_layernorm
        if getattr(self, "pos_embed", None) is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if getattr(self, "cls_token", None) is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_linear_layernorm)

    def check_img_size(self, height: int, width: int) -> None:
        if self.fixed_input_size is not None and (height, width) != tuple(self.fixed_input_size):
            h, w = self.fixed_input_size
            raise ValueError(
                f"{type(self).__name__} was built for {h}x{w} images (its position embedding has that grid), "
                f"got {height}x{width}; create it with img_size=({height}, {width})"
            )
        super().check_img_size(height, width)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if getattr(self, "cls_token", None) is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if getattr(self, "pos_embed", None) is not None:
            pos = self.pos_embed
            if grid is not None:
                built = self.patch_embed.grid_size
                pos = resample_pos_embed_for_grid(pos, grid[0], grid[1], built[0], built[1], self.num_prefix_tokens)
            x = x + pos
        return self.pos_drop(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        if self.dynamic_img_size:
            return self._pos_embed(self.patch_embed(x), self.token_grid(x))
        return self._pos_embed(self.patch_embed(x))

    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid of image batch `x` (rounded up when the patch embed pads)."""
        p = self.patch_reduction
        if self.dynamic_img_pad:
            return (x.shape[-2] + p - 1) // p, (x.shape[-1] + p - 1) // p
        return x.shape[-2] // p, x.shape[-1] // p

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def _tokens_to_fmt(self, x: torch.Tensor, grid: tuple[int, int], output_fmt: str) -> torch.Tensor:
        patches = x[:, self.num_prefix_tokens:]
        if output_fmt == "NLC" or patches.shape[1] != grid[0] * grid[1]:
            return patches
        maps = patches.reshape(x.shape[0], grid[0], grid[1], -1)
        return maps if output_fmt == "NHWC" else maps.permute(0, 3, 1, 2).contiguous()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs at `indices` as NCHW/NHWC maps (or NLC), and the final tokens.

        Blocks that drop tokens (EViT's `forward_tracked`) still give dense maps: each kept token goes
        back to its grid position, a dropped one keeps the value it had when it was dropped.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        grid = self.token_grid(x)
        x = self.embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        tracker = _DenseTokens(x, self.num_prefix_tokens, grid) if output_fmt != "NLC" and any(
            hasattr(b, "forward_tracked") for b in blocks) else None
        intermediates = []
        for i, blk in enumerate(blocks):
            fn = blk.forward_tracked if tracker is not None and hasattr(blk, "forward_tracked") else blk
            if self.grad_checkpointing and not torch.jit.is_scripting():
                out = checkpoint(fn, x, use_reentrant=False)
            else:
                out = fn(x)
            if isinstance(out, tuple):
                x = out[0]
                tracker.drop(out[1], out[2], x)
            else:
                x = out
            if i in take_indices:
                if tracker is not None:
                    dense = tracker.dense(x)
                    intermediates.append(self._tokens_to_fmt(self.norm(dense) if norm else dense, grid, output_fmt))
                else:
                    intermediates.append(self._tokens_to_fmt(self.norm(x) if norm else x, grid, output_fmt))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self._prune_head()
        return take_indices


def _unflatten_timm_feature_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """`load_state_dict` pre-hook: take the `state_dict()` of timm's twin `features_only` model.

    timm's FeatureListNet (MetaFormer, EfficientViT-M, SHViT) flattens the model's first-level
    `nn.Sequential`s into itself: `stages.0.x` is saved as `stages_0.x`, `patch_embed.conv1.x` as
    `patch_embed_conv1.x`, and there is no `model.` prefix. Such keys are turned back into the
    wrapped model's classification layout under `model.`; the model's own pre-hook
    (`_adapt_foreign_layout`) then renames timm's layout to the zoo's, as for any timm checkpoint.
    """
    inner = prefix + "model."
    keys = [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]
    if not keys:
        return
    own_top = {k.split(".", 1)[0] for k in module.model.state_dict()}
    for k in keys:
        first, _, rest = k[len(prefix):].partition(".")
        if first not in own_top and "_" in first:  # a flattened Sequential child: split at the last '_'
            first = ".".join(first.rsplit("_", 1))
        state_dict[inner + first + ("." + rest if rest else "")] = state_dict.pop(k)


class ZooFeatureGetterNet(FeatureGetterNet):
    """timm's FeatureGetterNet with `set_grad_checkpointing`, as timm's FeatureListNet has.

    Detection / segmentation pipelines call it on the backbone they get from `features_only=True`;
    the wrapped model checkpoints inside `forward_intermediates`. Its `load_state_dict` also takes
    the state dict of timm's twin `features_only` model (timm's FeatureListNet key layout).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_load_state_dict_pre_hook(_unflatten_timm_feature_keys)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.model, "grad_checkpointing", False))


def build_zoo_model(
        model_cls: type[nn.Module],
        variant: str,
        pretrained: bool = False,
        filter_fn: Callable[[dict, nn.Module], dict] | None = None,
        default_out_indices: int | tuple[int, ...] = (0, 1, 2, 3),
        **kwargs: Any,
) -> nn.Module:
    """timm's `build_model_with_cfg` with the zoo's defaults: filtered weights, features via intermediates.

    `features_only=True` returns a ZooFeatureGetterNet over `forward_intermediates` (NCHW maps at
    `out_indices`, default `default_out_indices`: all four stages of a pyramid; the last n
    blocks, given as an int, of an isotropic model). `feature_cls='list'` / `'dict'` / `'hook'` give
    the zoo's versions of timm's wrappers for a pyramid (vitzoo.models._timm_features), which walk
    its stages (`flatten_sequential`, as timm's pyramids set it); other models get a clear error.
    """
    feature_cfg = dict(feature_cls=ZooFeatureGetterNet, out_indices=kwargs.pop("out_indices", default_out_indices))
    if kwargs.get("features_only") and "feature_cls" in kwargs:
        kwargs["feature_cls"] = resolve_feature_cls(model_cls, variant, kwargs["feature_cls"])
    if issubclass(model_cls, HierarchicalBackbone):
        feature_cfg["flatten_sequential"] = True  # timm drops it for the getter classes
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=feature_cfg,
        **kwargs,
    )
    core = model if isinstance(model, ZooModel) else getattr(model, "model", None)
    if isinstance(core, ZooModel) and filter_fn is not None:
        core.__dict__["_zoo_checkpoint_filter"] = filter_fn  # see _adapt_foreign_layout
    return model
