"""The effective receptive field: which input pixels one value really depends on, and how much.

:func:`empirical_receptive_field` takes the gradient of one value (a position of a layer, one
channel or all summed) with respect to the input: the support of that gradient is the region the
value depends on for this image, its magnitude the effective receptive field. It works on any
model, through the capture engine (the pass stops at the layer).

:func:`trace_field` is what ``featuremap rf`` shows: the analytic box of
:func:`featuremap.receptive.receptive_field` where the analysis follows the model to the layer
(the whole image after attention), else the gradient's support, with the effective field to draw
under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featuremap import receptive
from featuremap.errors import ConfigError, printable
from featuremap.layers import in_channels, size_pair
from featuremap.model import as_model
from featuremap.receptive import ReceptiveField, check_position

__all__ = ["FieldTrace", "empirical_receptive_field", "trace_field"]


def empirical_receptive_field(model: Any, layer: str, *, position: tuple[int, int],
                              channel: int | None = None, input_size: int | tuple[int, int] = 224,
                              image: torch.Tensor | None = None) -> tuple[ReceptiveField, Any]:
    """The support of d(value)/d(input): its bounding box and the gradient-magnitude map.

    The value is ``layer``'s output at ``position`` in ``channel``, or with ``channel=None`` the
    sum of all channels there (every channel at one position shares one analytic field); where
    that sum cannot change (a LayerNorm's channels always sum to its bias, so its gradient is
    rounding noise), half the channels' squared norm instead. The model runs in eval mode (in
    training mode batch norm would mix positions), its modes restored.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        layer: a layer whose output is feature maps.
        position: ``(y, x)`` in the layer's map.
        channel: one channel, or None for all channels summed.
        input_size: the input size when no ``image`` is given (random noise is used).
        image: a prepared input ``(1, C, H, W)``.

    Returns:
        ``(ReceptiveField of the support's bounding box, effective RF (H, W) numpy array)``.

    Raises:
        ConfigError: a layer that is not feature maps, a position or channel outside the map,
            a value whose gradient is zero everywhere.
    """
    m = as_model(model)
    name = m.one_layer(layer)
    h, w = size_pair(input_size)
    x = image if image is not None else torch.randn(1, in_channels(m.module), h, w)
    x = x.to(m.device).clone().requires_grad_(True)
    got = m.capture([name], keep="graph")(x)
    if not got.meta[name].is_map:
        raise ConfigError(f"layer '{name}' has no spatial receptive field: it gives "
                          f"{got.meta[name].source_shape}, {got.meta[name].reason}.")
    out = got.map(name)
    y0, x0 = position
    check_position(position, tuple(out.shape[2:]), name)
    if channel is not None and not 0 <= channel < out.shape[1]:
        raise ConfigError(f"channel {channel} is outside the {out.shape[1]} channels of "
                          f"'{name}' (0..{out.shape[1] - 1}).")
    with torch.enable_grad():
        grad = _gradient(out[0, :, y0, x0], x, channel)[0].abs().sum(0).cpu()
    rows = torch.nonzero(grad.sum(1)).flatten()
    cols = torch.nonzero(grad.sum(0)).flatten()
    if rows.numel() == 0:
        what = "the sum of its channels" if channel is None else f"channel {channel}"
        raise ConfigError(f"the gradient of '{name}' at {tuple(position)} ({what}) is zero "
                          "everywhere: the value does not change with any pixel of this image "
                          "(e.g. cut to 0 by a ReLU). Try another position or channel, or no "
                          "channel (all channels summed).")
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return (ReceptiveField(box, box, (box[2] - box[0], box[3] - box[1]), (float("nan"),) * 2,
                           (float("nan"),) * 2), grad.detach().numpy())


def _gradient(vector: torch.Tensor, x: torch.Tensor, channel: int | None) -> torch.Tensor:
    """d(vector[channel])/dx, or d(sum)/dx; where the sum cancels, d(|vector|^2 / 2)/dx."""
    if channel is not None:
        return torch.autograd.grad(vector[channel], x)[0]
    (summed,) = torch.autograd.grad(vector.sum(), x, retain_graph=True)
    scale = float(vector.detach().abs().max())
    if scale > 0:
        (squared,) = torch.autograd.grad(vector.square().sum() / 2, x)
        if float(summed.abs().max()) <= 1e-4 * float(squared.abs().max()) / scale:
            return squared
    return summed


@dataclass
class FieldTrace:
    """One value's receptive field in one image: the analytic box (or, where the analysis has
    none, the gradient's support) and the effective field.

    Attributes:
        model_name, layer: where the value is.
        at: ``(y, x)`` in the layer's map; channel: one channel or None (all summed).
        input_size: ``(H, W)`` of the prepared input.
        field: the analytic :class:`~featuremap.receptive.ReceptiveField`, or None when the
            model cannot be traced or the analysis cannot follow it to the layer.
        support: the box of the gradient's support.
        erf: ``(H, W)`` gradient magnitude (the effective receptive field).
        picture: the prepared input ``(3, H, W)`` in ``[0, 1]``.
        notes: what could not be done (no analytic field) and why.
    """

    model_name: str
    layer: str
    at: tuple[int, int]
    channel: int | None
    input_size: tuple[int, int]
    field: ReceptiveField | None
    support: ReceptiveField
    erf: np.ndarray
    picture: np.ndarray
    notes: list[str]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The box to draw: the analytic one, else the gradient's support."""
        return (self.field or self.support).box

    @property
    def title(self) -> str:
        y, x = self.at
        of = "all channels" if self.channel is None else f"channel {self.channel}"
        shown = self.field or self.support
        words = f"stride {self.field.stride[0]:g}, field" if self.field else "gradient support"
        extra = " + global context" if self.field and self.field.global_context else ""
        extra = " (whole image)" if self.field and self.field.whole else extra
        return (f"{self.model_name} {self.layer} at ({y}, {x}), {of}: {words} "
                f"{shown.size[0]} x {shown.size[1]} px{extra}")

    def __str__(self) -> str:
        y, x = self.at
        h, w = self.input_size
        of = "all channels" if self.channel is None else f"channel {self.channel}"
        lines = [f"{printable(self.model_name)} {printable(self.layer)} at (y, x) = ({y}, {x}), "
                 f"input {h} x {w}"]
        f = self.field
        if f is not None and f.whole:
            lines.append(f"analytic field: the whole image {f.box}, stride {f.stride[0]:g} "
                         "(attention on the way lets every position see every pixel)")
        elif f is not None:
            lines.append(f"analytic box (y0, x0, y1, x1) {f.box}, clipped {f.clipped_box}, "
                         f"size {f.size[0]} x {f.size[1]}, stride {f.stride[0]:g}, offset "
                         f"{f.offset[0]:g}")
            if f.global_context:
                lines.append("global context: a global pooling on the way "
                             "(squeeze-and-excitation) or a GroupNorm lets every pixel in; the "
                             "box is the convolution path's")
        lines.append(f"gradient support box {self.support.box} ({of})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def box(f: ReceptiveField | None) -> Any:
            return None if f is None else {
                "box": list(f.box), "clipped_box": list(f.clipped_box), "size": list(f.size),
                "stride": [s if s == s else None for s in f.stride],
                "global_context": f.global_context, "whole": f.whole}

        return {"model": self.model_name, "layer": self.layer, "at": list(self.at),
                "channel": self.channel, "input_size": list(self.input_size),
                "field": box(self.field), "support": box(self.support), "notes": self.notes}


def trace_field(model: Any, image: Any, *, layer: str, at: tuple[int, int],
                channel: int | None = None) -> FieldTrace:
    """The receptive field of ``layer``'s value at ``at = (y, x)`` in ``image``: analytic box
    where the model can be traced (else the gradient's support, with a note), and the
    effective field.

    Example:
        >>> t = trace_field(load_model("shapes"), "docs/scene.png", layer="backbone.block2",
        ...                 at=(8, 8))  # doctest: +SKIP
        >>> t.field.size  # doctest: +SKIP
        (16, 16)
    """
    m = as_model(model)
    name = m.one_layer(layer)
    prepared = m.prepare(image)
    size = tuple(prepared.batch.shape[2:])
    support, erf = empirical_receptive_field(m, name, position=at, channel=channel,
                                             input_size=size, image=prepared.batch[:1])
    notes = list(prepared.notes)
    try:
        field = receptive.receptive_field(m, name, position=at, input_size=size)
    except ConfigError as err:  # untraceable, or a layer the analysis cannot follow
        notes.append(f"no analytic field ({str(err).rstrip('.')}); the box drawn is the "
                     "gradient's support")
        field = None
    return FieldTrace(m.name, name, tuple(at), channel, size, field, support, erf,
                      prepared.picture(0), notes)
