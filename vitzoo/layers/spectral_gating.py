"""Global filter (spectral gating) token mixer: FFT -> learnable complex filter -> inverse FFT.

GFNet's and SpectFormer's token mixer (Rao et al. 2021; Patro et al. 2023). The tokens of an
`H x W` grid are taken to the frequency domain with `rfft2` (orthonormal), multiplied
element-wise by a learnable complex filter of shape `[H, W // 2 + 1, C]` and brought back with
`irfft2`. The filter is stored as a real tensor `complex_weight[..., 2]` (real, imaginary) and
viewed as complex, as in the official code, so official checkpoints load as they are.

Precision: the FFT, the filter and the inverse FFT always run in float32 (cuFFT has no bf16 and
only power-of-two half sizes); the result is cast back to the input dtype, so the mixer runs
inside fp16/bf16 models and under autocast.

Other grids: a filter built for one grid is resized to another by bicubic interpolation of its
real and imaginary parts over `(H, W // 2 + 1)` with `align_corners=True` - the rule the official
fine-tuning script applies to `complex_weight` when it changes the input resolution. At the grid
it was built for the filter is used as is (no interpolation), so outputs there are exact.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

__all__ = ["SpectralGating", "resize_spectral_filter", "spectral_filter_size"]


def spectral_filter_size(grid_size: Sequence[int]) -> tuple[int, int]:
    """Shape `(H, W // 2 + 1)` of the `rfft2` spectrum (and of the filter) of an `H x W` grid."""
    h, w = (int(s) for s in grid_size)
    return h, w // 2 + 1


def resize_spectral_filter(weight: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Resize a filter `[h, w, C, 2]` to `[size[0], size[1], C, 2]` (bicubic, align_corners=True).

    Returns `weight` itself when it already has that size. Interpolation runs in float32 and
    the result has the dtype of `weight`.
    """
    if weight.ndim != 4 or weight.shape[-1] != 2:
        raise ValueError("a spectral filter has shape [h, w, C, 2], got " + str(list(weight.shape)))
    h, w, c, _ = weight.shape
    sh, sw = int(size[0]), int(size[1])
    if h == sh and w == sw:
        return weight
    if sh < 1 or sw < 1:
        raise ValueError("filter size must be positive, got " + str([sh, sw]))
    x = weight.float().reshape(1, h, w, c * 2).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=[sh, sw], mode="bicubic", align_corners=True)
    return x.permute(0, 2, 3, 1).reshape(sh, sw, c, 2).to(weight.dtype)


@register_notrace_module  # its layout and filter size follow the input's shape: an FX leaf, like timm's
class SpectralGating(nn.Module):
    """Global filter over a token grid; `[B, H, W, C]` or `[B, N, C]` in, same shape out.

    Args:
        dim: channels C.
        grid_size: the token grid `(H, W)` the filter is built for (e.g. 14x14 for a 224 image
            in 16-pixel patches); the filter has shape `[H, W // 2 + 1, C, 2]`.

    NLC input needs its grid: `token_grid` (set by the model that owns the mixer for the
    current input) or, when that is None, a square grid of `sqrt(N)` (the official rule).
    """

    token_grid: Optional[Tuple[int, int]]

    def __init__(self, dim: int, grid_size: Sequence[int] = (14, 14)) -> None:
        super().__init__()
        grid_size = tuple(int(s) for s in grid_size)
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be (H, W) with positive sides, got {grid_size}")
        self.dim = dim
        self.grid_size = grid_size
        fh, fw = spectral_filter_size(grid_size)
        self.complex_weight = nn.Parameter(torch.randn(fh, fw, dim, 2) * 0.02)
        #: grid (H, W) of the NLC tokens of the current forward, set by the owning model
        self.token_grid: tuple[int, int] | None = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.complex_weight.normal_(0.0, 0.02)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid_size={self.grid_size}"

    def _grid_of(self, n: int) -> Tuple[int, int]:
        grid = self.token_grid
        if grid is not None:
            h, w = grid
            if h * w != n:
                raise ValueError("SpectralGating got " + str(n) + " tokens but its token_grid is "
                                 + str(h) + "x" + str(w) + " (" + str(h * w) + " tokens)")
            return int(h), int(w)
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError("SpectralGating got " + str(n) + " tokens, not a square grid; "
                             "pass [B, H, W, C] or set token_grid")
        return side, side

    def filter_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The complex filter `[H, W // 2 + 1, C]` (complex64) for an `H x W` token grid."""
        weight = resize_spectral_filter(self.complex_weight, [int(grid[0]), int(grid[1]) // 2 + 1])
        return torch.view_as_complex(weight.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 and x.ndim != 4:
            raise ValueError("SpectralGating expects [B, H, W, C] or [B, N, C], got shape " + str(list(x.shape)))
        if x.shape[-1] != self.dim:
            raise ValueError("SpectralGating was built for " + str(self.dim) + " channels, got "
                             + str(x.shape[-1]))
        shape = x.shape
        if x.ndim == 3:
            B, N, C = x.shape
            H, W = self._grid_of(N)
            x = x.reshape(B, H, W, C)
        H, W = x.shape[1], x.shape[2]
        dtype = x.dtype
        spec = torch.fft.rfft2(x.float(), dim=(1, 2), norm="ortho")
        spec = spec * self.filter_for((H, W))
        x = torch.fft.irfft2(spec, s=[H, W], dim=(1, 2), norm="ortho").to(dtype)
        return x.reshape(shape)
