"""The arithmetic behind one value of a real network's convolution.

:func:`explain` reads the input maps of a ``Conv2d`` layer (one forward pass that stops at the
layer), hands them with the layer's weights and settings to the transparent engine's
:func:`featuremap.conv.explain`, and returns the same :class:`~featuremap.conv.Explanation` as
for a toy filter bank: the patch of every input channel (padding cells marked), the kernel, the
products, the bias, and their sum, which equals the value the network computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from featuremap.conv import Explanation
from featuremap.conv import explain as explain_engine
from featuremap.errors import ConfigError, FeaturemapError
from featuremap.model import Model, as_model

__all__ = ["explain", "image_region"]


def _conv_layer(m: Model, layer: str) -> tuple[str, nn.Conv2d]:
    name = m.one_layer(layer)
    conv = dict(m.module.named_modules())[name]
    if not isinstance(conv, nn.Conv2d):
        convs = [n for n, mod in m.module.named_modules() if isinstance(mod, nn.Conv2d)]
        shown = ", ".join(convs[:4]) + (", ..." if len(convs) > 4 else "")
        raise ConfigError(
            f"layer '{name}' ({type(conv).__name__}) is not a Conv2d: explain shows the products "
            f"of a convolution. This model has {len(convs)} Conv2d layers ({shown}); "
            f"'featuremap layers {m.name or 'MODEL'} --type conv' lists them.")
    return name, conv


def explain(model: Any, image: Any, *, layer: str, at: tuple[int, int, int]) -> Explanation:
    """The patch x kernel products behind ``layer``'s output at ``at = (channel, y, x)``.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: a path, ``"sample:NAME"``, PIL image, array (preprocessed as the model expects)
            or a tensor ``(1, C, H, W)`` used as it is.
        layer: a ``Conv2d`` layer (strided, padded, dilated and grouped ones included).
        at: output channel, row and column.

    Returns:
        The engine's :class:`~featuremap.conv.Explanation`; ``value`` equals the network's.

    Raises:
        ConfigError: a layer that is not a Conv2d (naming those that are), ``at`` outside the
            map (with its shape).

    Example:
        >>> e = explain(load_model("shapes"), "sample:coins", layer="backbone.block2.conv1",
        ...             at=(3, 10, 12))  # doctest: +SKIP
        >>> print(e)  # doctest: +SKIP
    """
    m = as_model(model)
    layer, conv = _conv_layer(m, layer)
    batch = m.prepare(image).batch[:1]
    x = m.capture([layer], inputs=[layer])(batch).inputs[layer]  # stops after the layer
    # the layer reads the (preprocessed) image itself: name its channels
    rgb = ("R", "G", "B") if x.shape[1] == 3 and torch.equal(x, batch[:1]) else ()
    padding: Any = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    bias = conv.bias.detach().float().cpu().numpy() if conv.bias is not None else None
    e = explain_engine(
        x[0].float().cpu().numpy(), conv.weight.detach().float().cpu().numpy(), bias, at=at,
        stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation),
        groups=conv.groups, padding_mode=conv.padding_mode,
        map_name=f"{layer}, output channel {at[0] if len(at) else '?'}", channel_names=rgb)
    seen = image_region(m, layer, e.at[1:], tuple(batch.shape[2:]))
    return dataclasses.replace(e, context=(seen,)) if seen else e


def image_region(model: Any, layer: str, at: tuple[int, int], size: tuple[int, int]) -> str:
    """Which pixels of the input image one value of ``layer`` sees, as one line (``""`` where
    the receptive field is undefined)."""
    from featuremap.receptive import receptive_field

    try:
        field = receptive_field(model, layer, position=at, input_size=size)
    except FeaturemapError:
        return ""
    y0, x0, y1, x1 = field.clipped_box
    extra = "; it also sees the whole image through global pooling" if (
        field.global_context) else ""
    return (f"in the {size[0]} x {size[1]} input image this value sees rows {y0}..{y1 - 1}, "
            f"cols {x0}..{x1 - 1} (receptive field {field.size[0]} x {field.size[1]} px, "
            f"stride {field.stride[0]:g}{extra}; 'featuremap rf' draws it)")
