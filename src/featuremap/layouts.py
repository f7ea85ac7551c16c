"""Which dims of a layer's output are the image's rows, columns and channels.

Convolutions give ``(N, C, H, W)``. Other networks lay their feature maps out differently, and
featuremap turns each into ``(N, C, H, W)`` maps on the input's grid, recording how:

- ``"NCHW"``: convolutional maps, as they are.
- ``"NHWC"``: channels last (timm's ConvNeXt blocks before their permute, Swin stages, any
  ``Linear``/``LayerNorm`` applied per position): permuted to ``(N, C, H, W)``.
- ``"tokens"``: a vision transformer's sequence ``(N, T, C)`` whose last ``h * w`` tokens are the
  patch grid; the class/register tokens in front (``prefix`` of them) are dropped and the rest
  reshaped to ``(N, C, h, w)``.
- ``"vector"``: one vector per image ``(N, D)`` (after global pooling, a classifier): not a map.
- ``"other"``: anything else (attention weights, windows of a Swin block): not a map; ``reason``
  says why.

The rule for a 4-D output ``(N, A, B, C)``: torch's 2-D convolutions, batch norms and pools are
``NCHW`` whatever their aspect (a stride of ``(1, 2)`` halves only the columns); for other
modules it is ``NCHW`` when ``(B, C)`` has the input's aspect
(rows and columns shrunk by about the same stride), else ``NHWC`` when ``(A, B)`` has it; a
``Linear`` or ``LayerNorm`` (which act on the last dim) is ``NHWC`` whenever ``(A, B)`` fits;
``(N, heads, T, T)`` whose ``T`` is a transformer's tokens is attention, not a map. For
3-D ``(N, T, C)`` the patch grid is the input divided by one integer stride (the patch size),
else of about the input's aspect: the prefix is the model's ``num_prefix_tokens`` when it has
one (timm), else the fewest leading tokens (0 to 16) whose removal leaves such a grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["Layout", "describe_output", "layout_of", "to_maps"]

_MAX_PREFIX = 16
_LAST_DIM_OPS = ("Linear", "LayerNorm", "RMSNorm")


@dataclass(frozen=True)
class Layout:
    """How one output holds its maps.

    Attributes:
        kind: ``"NCHW"``, ``"NHWC"``, ``"tokens"``, ``"vector"`` or ``"other"``.
        grid: ``(h, w)`` of the maps (None when not a map).
        prefix: tokens dropped from the front (``"tokens"`` only).
        reason: why the output is not a map (``""`` when it is).
    """

    kind: str
    grid: tuple[int, int] | None = None
    prefix: int = 0
    reason: str = ""

    @property
    def is_map(self) -> bool:
        return self.kind in ("NCHW", "NHWC", "tokens")

    def describe(self) -> str:
        """A note for layouts that were converted (``""`` for NCHW and non-maps)."""
        if self.kind == "NHWC":
            return "channels-last output (N, H, W, C) permuted to (N, C, H, W)"
        if self.kind == "tokens":
            h, w = self.grid or (0, 0)
            dropped = (f"; the {self.prefix} token{'s' if self.prefix != 1 else ''} in front "
                       "(class/register) dropped" if self.prefix else "")
            return f"tokens (N, T, C) reshaped to the {h} x {w} patch grid{dropped}"
        return ""


def _channels_first(module: Any) -> bool:
    """True for torch's 2-D convolutions, batch norms and pools: always ``(N, C, H, W)``."""
    if module is None:
        return False
    from torch import nn

    return isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                               nn.AdaptiveMaxPool2d)) and not isinstance(
        module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d))


def _fits(size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """True when ``grid`` is ``size`` shrunk by about the same stride along both axes."""
    h, w = grid
    if h < 1 or w < 1:
        return False
    sy, sx = size[0] / h, size[1] / w
    return max(sy, sx) / min(sy, sx) <= 1.25 or (abs(h - size[0] / sx) <= 1 and h * w > 1)


def _exact(size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """True when ``grid`` is ``size`` divided by one integer stride, rounded down (or up, for
    padded patches) on both axes alike: 14 x 14 for 224 x 224 at stride 16, never 13 x 15."""
    if min(grid) < 1:
        return False
    n, g = max(zip(size, grid), key=lambda pair: pair[1])  # the longer grid side bounds it
    if g == 1:  # 1 x 1: any stride of at least the input's size
        return True
    for stride in range(max(1, n // (g + 1)), n // (g - 1) + 2):
        if grid in ((size[0] // stride, size[1] // stride),
                    (-(-size[0] // stride), -(-size[1] // stride))):
            return True
    return False


def _grid_of(tokens: int, size: tuple[int, int], prefix_hint: int | None,
             rules: tuple = ()) -> tuple[int, int, int]:
    """``(prefix, h, w)`` with ``h * w == tokens - prefix`` on the input's aspect, else
    ``(-1, 0, 0)``. A grid at one exact stride wins over one of about the input's aspect, so a
    class token is not dropped from patch tokens that have none yet (ViT's ``patch_embed``)."""
    order = ([prefix_hint] if prefix_hint is not None else []) + list(range(_MAX_PREFIX + 1))
    for fits in rules or (_exact, _fits):
        for prefix in dict.fromkeys(order):
            count = tokens - prefix
            if count < 1:
                break
            h = round(math.sqrt(count * size[0] / size[1]))
            for rows in (h, h - 1, h + 1):
                if rows >= 1 and count % rows == 0 and fits(size, (rows, count // rows)):
                    return prefix, rows, count // rows
    return -1, 0, 0


def _attention(shape: tuple[int, ...], size: tuple[int, int], prefix_hint: int | None) -> bool:
    """``(N, heads, T, T)`` in a transformer (a model that says how many prefix tokens it has)
    where ``T`` is its tokens, those prefix tokens and an exact patch grid, but ``T x T`` is no
    map at an exact stride: attention weights between tokens."""
    tokens = shape[3]
    if prefix_hint is None or shape[2] != tokens or _exact(size, (tokens, tokens)):
        return False
    return _grid_of(tokens, size, prefix_hint, (_exact,))[0] == prefix_hint


def layout_of(shape: tuple[int, ...], module: nn.Module | None, *, batch: int,
              size: tuple[int, int], prefix_hint: int | None = None) -> Layout:
    """The layout of an output of ``shape`` for ``batch`` images of ``size = (H, W)``.

    Args:
        shape: the output tensor's shape.
        module: the module that produced it (its type breaks ties), or None.
        batch: the number of images in the forward pass.
        size: the input's ``(H, W)``.
        prefix_hint: the model's number of prefix tokens, when it says (timm's
            ``num_prefix_tokens``).

    Example:
        >>> layout_of((1, 197, 192), None, batch=1, size=(224, 224)).grid
        (14, 14)
    """
    kind = type(module).__name__ if module is not None else ""
    if not shape or shape[0] != batch:
        found = shape[0] if shape else "none"
        return Layout("other", reason=(
            f"its first dim ({found}) is not the number of images ({batch}): windows or patches "
            "of the image (as inside a Swin block), not one map per image"))
    if len(shape) == 2:
        return Layout("vector", reason="one vector per image (N, D), not maps")
    if len(shape) == 4 and _channels_first(module):
        return Layout("NCHW", (shape[2], shape[3]))  # whatever the aspect (a stride of (1, 2))
    if len(shape) == 4:
        nchw, nhwc = _fits(size, shape[2:4]), _fits(size, shape[1:3])
        if nhwc and (not nchw or kind.endswith(_LAST_DIM_OPS)):
            return Layout("NHWC", (shape[1], shape[2]))
        if nchw and _attention(shape, size, prefix_hint):
            return Layout("other", reason=(
                f"its last two dims {tuple(shape[2:])} are the {shape[3]} tokens twice: "
                "attention weights between tokens, not a map of the image"))
        if nchw:
            return Layout("NCHW", (shape[2], shape[3]))
        return Layout("other", reason=(
            f"neither its last two dims {tuple(shape[2:])} nor its middle two "
            f"{tuple(shape[1:3])} are the input's {size[0]} x {size[1]} grid shrunk by one stride "
            "(attention weights or a reshaped tensor)"))
    if len(shape) == 3:
        prefix, h, w = _grid_of(shape[1], size, prefix_hint)
        if prefix >= 0:
            return Layout("tokens", (h, w), prefix)
        return Layout("other", reason=(
            f"its {shape[1]} tokens do not form a grid of the input's aspect ({size[0]} x "
            f"{size[1]}) after dropping up to {_MAX_PREFIX} class/register tokens"))
    return Layout("other", reason=f"a {len(shape)}-D output {tuple(shape)}, not (N, C, H, W) maps")


def to_maps(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A view of ``tensor`` as ``(N, C, H, W)`` maps (the tensor itself for NCHW and non-maps).

    Not contiguous for NHWC and tokens: copy it (``.contiguous()``) to keep it.
    """
    if layout.kind == "NHWC":
        return tensor.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        h, w = layout.grid
        n, _, c = tensor.shape
        return tensor[:, layout.prefix:].reshape(n, h, w, c).permute(0, 3, 1, 2)
    return tensor


def describe_output(output: Any) -> str:
    """``shape (1, 1000)`` for a tensor, ``a tuple`` for anything else."""
    shape = getattr(output, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else f"a {type(output).__name__}"
