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

__all__ = ["LayerInput", "explain", "image_region", "layer_input", "layer_lab"]


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


@dataclasses.dataclass(frozen=True)
class LayerInput:
    """A convolution's real input on one image, and the layer: what its arithmetic runs on.

    Attributes:
        layer: the layer's name; input: ``(C, H, W)`` float32, the maps it reads.
        weight: ``(D, C / groups, kH, kW)``; bias: ``(D,)`` or None.
        settings: the layer's own ``stride``, ``padding``, ``dilation``, ``groups`` and
            ``padding_mode``.
        channel_names: ``("R", "G", "B")`` when the layer reads the image itself.
        size: the ``(H, W)`` of the image the network saw.
    """

    layer: str
    input: Any
    weight: Any
    bias: Any
    settings: dict
    channel_names: tuple[str, ...]
    size: tuple[int, int]


def layer_input(model: Any, image: Any, *, layer: str) -> LayerInput:
    """The input a ``Conv2d`` layer reads on ``image`` (one pass that stops after the layer).

    Raises:
        ConfigError: a layer that is not a Conv2d (naming those that are).
    """
    m = as_model(model)
    layer, conv = _conv_layer(m, layer)
    batch = m.prepare(image).batch[:1]
    x = m.capture([layer], inputs=[layer])(batch).inputs[layer]  # stops after the layer
    # the layer reads the (preprocessed) image itself: name its channels
    rgb = ("R", "G", "B") if x.shape[1] == 3 and torch.equal(x, batch[:1]) else ()
    padding: Any = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    bias = conv.bias.detach().float().cpu().numpy() if conv.bias is not None else None
    settings = {"stride": tuple(conv.stride), "padding": padding,
                "dilation": tuple(conv.dilation), "groups": conv.groups,
                "padding_mode": conv.padding_mode}
    return LayerInput(layer, x[0].float().cpu().numpy(), conv.weight.detach().float().cpu()
                      .numpy(), bias, settings, rgb, tuple(batch.shape[2:]))


def layer_lab(model: Any, image: Any, *, layer: str, stride: Any = None, padding: Any = None,
              dilation: Any = None, padding_mode: str | None = None, depth: int | None = None):
    """A real convolution's filters on its real input, with the settings you choose: the
    transparent engine computes the maps (the network's own values at the layer's own
    settings), so stride, padding, dilation and depth can be tuned on a trained layer.

    Returns:
        A :class:`~featuremap.toy.ToyMaps` (maps named ``"ch i"``; ``input`` is the layer's
        input maps).

    Example:
        >>> lab = layer_lab(load_model("shapes"), "docs/scene.png",  # doctest: +SKIP
        ...                 layer="backbone.block1.conv1", stride=2)
    """
    from featuremap.arithmetic import conv_cost
    from featuremap.conv import conv2d
    from featuremap.toy import ToyMaps

    got = layer_input(model, image, layer=layer)
    st, weight, bias = _settings(got, stride, padding, dilation, padding_mode, depth)
    maps = conv2d(got.input, weight, bias, stride=st["stride"], padding=st["padding"],
                  dilation=st["dilation"], groups=st["groups"], padding_mode=st["padding_mode"])
    cost = conv_cost(got.input.shape[1:], tuple(weight.shape[2:]), depth=len(weight),
                     in_channels=got.input.shape[0], stride=st["stride"], padding=st["padding"],
                     dilation=st["dilation"], groups=st["groups"], bias=bias is not None,
                     padding_mode=st["padding_mode"])
    settings = {**st, "stride": cost.stride, "padding": cost.padding,
                "dilation": cost.dilation, "kernel_size": cost.kernel_size, "layer": got.layer,
                "channels": "layer input"}
    return ToyMaps(maps=maps, names=tuple(f"ch {i}" for i in range(len(weight))),
                   input=got.input, cost=cost, settings=settings)


def _settings(got: LayerInput, stride: Any, padding: Any, dilation: Any,
              padding_mode: str | None, depth: int | None) -> tuple[dict, Any, Any]:
    """The layer's settings with the chosen ones put in, and its weights cut to ``depth``."""
    st = dict(got.settings)
    for key, value in (("stride", stride), ("padding", padding), ("dilation", dilation),
                       ("padding_mode", padding_mode)):
        if value is not None:
            st[key] = value
    weight, bias = got.weight, got.bias
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(weight):
            raise ConfigError(f"depth must be from 1 to the layer's {len(weight)} filters, got "
                              f"{depth!r}.")
        if depth % st["groups"]:
            raise ConfigError(f"depth {depth} must be a multiple of the layer's groups "
                              f"({st['groups']}).")
        weight, bias = weight[:depth], (bias[:depth] if bias is not None else None)
    return st, weight, bias


def explain(model: Any, image: Any, *, layer: str, at: tuple[int, int, int],
            stride: Any = None, padding: Any = None, dilation: Any = None,
            padding_mode: str | None = None, depth: int | None = None) -> Explanation:
    """The patch x kernel products behind ``layer``'s output at ``at = (channel, y, x)``.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: a path, ``"sample:NAME"``, PIL image, array (preprocessed as the model expects)
            or a tensor ``(1, C, H, W)`` used as it is.
        layer: a ``Conv2d`` layer (strided, padded, dilated and grouped ones included).
        at: output channel, row and column.
        stride, padding, dilation, padding_mode, depth: other settings for the layer (as
            :func:`layer_lab`); by default its own.

    Returns:
        The engine's :class:`~featuremap.conv.Explanation`; at the layer's own settings
        ``value`` equals the network's.

    Raises:
        ConfigError: a layer that is not a Conv2d (naming those that are), ``at`` outside the
            map (with its shape).

    Example:
        >>> e = explain(load_model("shapes"), "sample:coins", layer="backbone.block2.conv1",
        ...             at=(3, 10, 12))  # doctest: +SKIP
        >>> print(e)  # doctest: +SKIP
    """
    m = as_model(model)
    got = layer_input(m, image, layer=layer)
    st, weight, bias = _settings(got, stride, padding, dilation, padding_mode, depth)
    own = st == got.settings and depth is None
    e = explain_engine(
        got.input, weight, bias, at=at, stride=st["stride"], padding=st["padding"],
        dilation=st["dilation"], groups=st["groups"], padding_mode=st["padding_mode"],
        map_name=f"{got.layer}, output channel {at[0] if len(at) else '?'}",
        channel_names=got.channel_names)
    seen = image_region(m, got.layer, e.at[1:], got.size) if own else ""
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
