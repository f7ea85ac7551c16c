"""A network at a glance: every layer with its output shape, its stages, and the layer table.

- :func:`list_layers`: the named modules with output shapes from one forward pass on zeros (the
  engine's :func:`featuremap.capture.trace_shapes`), kernel, stride, padding and total stride.
- :func:`overview_layers`: the layers that show a network from low to high (the first
  convolution, then the end of each stage).
- :func:`layer_table`: what ``featuremap layers`` prints: the listing with every layer's
  receptive field and the notes that explain its marks, as one value with ``__str__`` and
  ``to_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featuremap.capture import trace_shapes
from featuremap.errors import ConfigError, FeaturemapError
from featuremap.layers import LayerInfo, format_geometry, layer_infos, size_pair
from featuremap.layers import in_channels as first_conv_channels

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["LayerTable", "format_field", "layer_table", "list_layers", "overview_layers"]

DID_NOT_RUN = ("- : did not run in the forward pass (a training-only or auxiliary head, or one "
               "another method calls).")
WHOLE = ("whole image with a stride: attention on the way lets every position of these maps see "
         "every pixel.")
GLOBAL_CONTEXT = ("* also sees every pixel through a global pooling on the way "
                  "(squeeze-and-excitation) or a GroupNorm; the size is the convolution path's.")


def _module(model: Any) -> nn.Module:
    return getattr(model, "module", model)


def list_layers(
    model: Any,
    *,
    input_size: int | tuple[int, int] = 224,
    in_channels: int | None = None,
    types: str | type | Iterable[str | type] | None = None,
    pattern: str | None = None,
    leaves_only: bool = False,
    model_name: str | None = None,
) -> list[LayerInfo]:
    """List the named modules of ``model`` with their output shapes, in module order.

    Args:
        model: any ``torch.nn.Module`` taking one image batch ``(N, C, H, W)``, or a model from
            :func:`featuremap.load_model`.
        input_size: ``H = W`` as an int, or ``(H, W)``.
        in_channels: ``C``; by default the ``in_channels`` of the first ``Conv2d`` (else 3).
        types: keep modules whose class name contains this text (case-insensitive: ``"conv"``,
            ``"pool"``, ``"relu"``) or that are instances of this class; or a list of either.
        pattern: keep names matching this glob, regex or exact name.
        leaves_only: keep only modules without children.
        model_name: the name the model was loaded by, for the hint of errors.

    Returns:
        One :class:`~featuremap.layers.LayerInfo` per kept module.

    Raises:
        UnknownNameError: a pattern that matches no layer, a type no module has (both with
            did-you-mean suggestions).
        ConfigError: a bad option, or the forward pass fails, e.g. an input too small for the
            network (the message names the layer where the map would vanish).

    Example:
        >>> from torchvision.models import resnet18
        >>> [i.output_shape for i in list_layers(resnet18(), pattern="layer1")]
        [(64, 56, 56)]
    """
    module = _module(model)
    name = model_name if model_name is not None else getattr(model, "name", None)
    height, width = size_pair(input_size)
    channels = first_conv_channels(module) if in_channels is None else in_channels
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {channels!r}.")
    shapes = trace_shapes(module, (1, channels, height, width))
    return layer_infos(module, shapes, input_size=(height, width), types=types,
                       pattern=pattern, leaves_only=leaves_only, model_name=name)


def overview_layers(model: Any, *, input_size: int | tuple[int, int] = 224,
                    in_channels: int | None = None,
                    infos: list[LayerInfo] | None = None) -> list[str]:
    """Layers that show a network from low to high: the first convolution, then the last
    module at each cumulative stride (the end of each stage), while the maps are spatial.

    ``infos`` (a full :func:`list_layers` of the model) saves the shape pass.

    Example:
        >>> overview_layers(torchvision.models.resnet18())  # doctest: +SKIP
        ['conv1', 'relu', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    module = _module(model)
    listed = infos if infos is not None else list_layers(module, input_size=input_size,
                                                         in_channels=in_channels)
    infos = [i for i in listed
             if i.output_shape is not None and len(i.output_shape) == 3
             and i.cumulative_stride is not None and min(i.output_shape[1:]) > 1]
    if not infos:
        raise ConfigError(f"{type(module).__name__} has no layer with spatial feature maps.")
    infos = [i for i in infos if "Adaptive" not in i.type]
    chosen = [next((i.name for i in infos if i.type.startswith("Conv")), infos[0].name)]
    for depth in (1, 2, 3):  # the shallowest level whose modules span several strides
        stage_ends: dict[float, str] = {}
        for info in infos:
            if info.depth == depth:
                stage_ends[info.cumulative_stride] = info.name
        if len(stage_ends) >= 3:
            break
    chosen += [name for name in stage_ends.values() if name not in chosen]
    names = [name for name, _ in module.named_modules()]

    def finished(name: str) -> tuple[int, int]:  # a container finishes after its last child
        inside = [k for k, n in enumerate(names) if n == name or n.startswith(name + ".")]
        return max(inside), -len(name)

    return sorted(chosen, key=finished)


COLUMNS = ("name", "type", "output shape", "params", "kernel", "stride", "padding", "dilation",
           "total stride", "receptive field")


@dataclass
class LayerTable:
    """Every listed layer of a model with shape, geometry and receptive field.

    Attributes:
        model_name: the model's name.
        input_size: ``(H, W)`` the shapes were measured at.
        layers: the :class:`~featuremap.layers.LayerInfo` of each listed layer.
        fields: ``{name: ReceptiveField | "global" | None}`` (empty when untraceable).
        notes: the sentences that explain the table's marks (``-``, ``*``).
        warnings: what could not be computed (e.g. no receptive fields for an untraceable
            model), said once.
        indent: whether rows are indented by depth (a full listing).
    """

    model_name: str
    input_size: tuple[int, int]
    layers: list[LayerInfo]
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    indent: bool = True

    @property
    def title(self) -> str:
        h, w = self.input_size
        return f"{self.model_name}: {len(self.layers)} layers at input {h}x{w}"

    def rows(self) -> list[tuple[str, ...]]:
        """One tuple of cells per layer, in :data:`COLUMNS` order."""
        rows = []
        for i in self.layers:
            stride, size = format_field(self.fields.get(i.name), i.cumulative_stride)
            indent = "  " * (i.depth - 1) if self.indent else ""
            shape = " x ".join(map(str, i.output_shape)) if i.output_shape else "-"
            rows.append((indent + i.name, i.type, shape, f"{i.params:,}",
                         *(format_geometry(v) for v in (i.kernel_size, i.stride, i.padding,
                                                        i.dilation)), stride, size))
        return rows

    def __str__(self) -> str:
        rows = [COLUMNS, *self.rows()]
        widths = [max(len(r[k]) for r in rows) for k in range(len(COLUMNS))]
        lines = [self.title]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if k < 2 else c.rjust(w)
                                   for k, (c, w) in enumerate(zip(r, widths))).rstrip())
        return "\n".join(lines + self.notes)

    def to_dict(self) -> dict[str, Any]:
        from featuremap.receptive import ReceptiveField

        def fld(value: Any) -> Any:
            if isinstance(value, ReceptiveField):
                return {"size": list(value.size), "stride": list(value.stride),
                        "global_context": value.global_context}
            return value

        return {"title": self.title, "model": self.model_name,
                "input_size": list(self.input_size),
                "columns": list(COLUMNS), "rows": [list(r) for r in self.rows()],
                "fields": {i.name: fld(self.fields.get(i.name)) for i in self.layers},
                "notes": list(self.notes), "warnings": list(self.warnings)}


def layer_table(model: Any, *, input_size: int | tuple[int, int] | None = None,
                types: str | None = None, pattern: str | None = None,
                leaves_only: bool = False) -> LayerTable:
    """The table ``featuremap layers`` prints: shapes, geometry, total stride, receptive field.

    Args:
        model: a model from :func:`featuremap.load_model` (or an ``nn.Module``).
        input_size: ``H = W`` or ``(H, W)`` (default: the model's input size).
        types, pattern, leaves_only: filters, as :func:`list_layers`.

    Example:
        >>> print(layer_table(load_model("shapes"), pattern="backbone.block*"))  # doctest: +SKIP
    """
    from featuremap.receptive import receptive_fields

    size = size_pair(input_size if input_size is not None else _default_size(model))
    infos = list_layers(model, input_size=size, types=types, pattern=pattern,
                        leaves_only=leaves_only)
    warnings: list[str] = []
    try:
        fields = receptive_fields(model, input_size=size)
    except FeaturemapError as err:
        fields = {}
        warnings.append(f"no receptive fields: {err}")
    notes = []
    if any(i.output_shape is None for i in infos):
        notes.append(DID_NOT_RUN)
    if any(getattr(fields.get(i.name), "global_context", False) for i in infos):
        notes.append(GLOBAL_CONTEXT)
    if any(getattr(fields.get(i.name), "whole", False) for i in infos):
        notes.append(WHOLE)
    name = getattr(model, "name", "") or type(_module(model)).__name__
    return LayerTable(name, size, infos, fields, notes, warnings,
                      indent=not (leaves_only or types or pattern))


def format_field(field: Any, cumulative: float | None = None) -> tuple[str, str]:
    """Table cells ``(total stride, receptive field)`` for one entry of
    :func:`featuremap.receptive.receptive_fields`: ``('8', '91')``, ``'91*'`` with global
    context, ``('16', 'whole image')`` through attention, ``('', 'whole image')`` after global
    pooling; without a field the stride falls back to ``cumulative`` (the input / output size
    ratio of :class:`featuremap.layers.LayerInfo`)."""
    from featuremap.receptive import GLOBAL, ReceptiveField

    if field == GLOBAL:
        return "", "whole image"
    if not isinstance(field, ReceptiveField):
        return (f"{cumulative:g}" if cumulative else ""), ""
    stride = "x".join(dict.fromkeys(f"{s:g}" for s in field.stride))
    size = "x".join(dict.fromkeys(str(s) for s in field.size))  # '16', or '16x9'
    return stride, "whole image" if field.whole else size + ("*" if field.global_context else "")


def _default_size(model: Any) -> tuple[int, int]:
    size = getattr(model, "input_size", None)
    return tuple(size) if size else (224, 224)

