"""The arithmetic behind one value of a real network's convolution.

:func:`explain` reads the input maps of a ``Conv2d`` layer (one forward pass that stops at the
layer), hands them with the layer's weights and settings to the transparent engine's
:func:`featuremap.conv.explain`, and returns the same :class:`~featuremap.conv.Explanation` as
for a toy filter bank: the patch of every input channel (padding cells marked), the kernel, the
products, the bias, and their sum, which equals the value the network computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featuremap.conv import Explanation
from featuremap.conv import explain as explain_engine
from featuremap.errors import ConfigError, did_not_run
from featuremap.extraction import _device_of, _model_parts, prepare_images
from featuremap.layers import resolve_layers

__all__ = ["explain"]


class _Stop(Exception):
    pass


def _conv_layer(module: nn.Module, layer: str, model_name: str) -> tuple[str, nn.Conv2d]:
    name = resolve_layers(module, [layer], model_name=model_name or None)[0]
    conv = dict(module.named_modules())[name]
    if not isinstance(conv, nn.Conv2d):
        convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        shown = ", ".join(convs[:4]) + (", ..." if len(convs) > 4 else "")
        raise ConfigError(
            f"layer '{name}' ({type(conv).__name__}) is not a Conv2d: explain shows the products "
            f"of a convolution. This model has {len(convs)} Conv2d layers ({shown}); "
            f"'featuremap layers {model_name or 'MODEL'} --type conv' lists them.")
    return name, conv


def _input_of(module: nn.Module, conv: nn.Conv2d, batch: torch.Tensor, layer: str,
              model_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's input and output for ``batch``; the pass stops right after the layer."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_m, inputs, output):
        seen["in"], seen["out"] = inputs[0].detach().clone(), output.detach().clone()
        raise _Stop

    handle = conv.register_forward_hook(hook)
    try:
        with torch.no_grad():
            module(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "in" not in seen:
        raise did_not_run([layer], model_name)
    return seen["in"], seen["out"]


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
    module, preprocess, name = _model_parts(model)
    layer, conv = _conv_layer(module, layer, name)
    batch, _, _ = prepare_images(image, preprocess, device=_device_of(module))
    x, _ = _input_of(module, conv, batch[:1], layer, name or type(module).__name__)
    # the layer reads the (preprocessed) image itself: name its channels
    rgb = ("R", "G", "B") if x.shape[1] == 3 and torch.equal(x, batch[:1]) else ()
    padding: Any = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    bias = conv.bias.detach().float().cpu().numpy() if conv.bias is not None else None
    return explain_engine(
        x[0].float().cpu().numpy(), conv.weight.detach().float().cpu().numpy(), bias, at=at,
        stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation),
        groups=conv.groups, padding_mode=conv.padding_mode,
        map_name=f"{layer}, output channel {at[0] if len(at) else '?'}", channel_names=rgb)
