"""The one model object every function accepts: a module and what it needs around it.

:class:`Model` is what :func:`featuremap.load_model` returns. Any ``nn.Module`` becomes one with
:meth:`Model.wrap` (or by passing the module itself wherever a model is taken, which wraps it
with ImageNet preprocessing and says so). A model carries its name, what weights it holds, the
preprocessing its weights expect, its category names, its device, and what it can do:

- ``segmentation``: a :class:`SegmentationHead` when the network labels pixels itself (the
  bundled model's head reads the backbone's maps, so one pass serves recognition and
  segmentation; torchvision's FCN, DeepLabV3 and LR-ASPP are whole segmentation networks);
- :attr:`Model.cam_head`: the global average pool and Linear layer that classic CAM needs;
- :meth:`Model.stages`: the end of each stage with channels, stride and receptive field (what
  timm calls ``feature_info``, here derived for any model), computed once per input size.

:meth:`Model.prepare` turns images into the batch the network takes, with notes on what
preprocessing did; :meth:`Model.capture` configures the engine (:mod:`featuremap.capture`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremap.capture import Capture, blank_input, device_of
from featuremap.errors import ConfigError, printable
from featuremap.layers import resolve_layers, size_pair
from featuremap.preprocess import Preprocess

__all__ = [
    "Model",
    "Prepared",
    "SegmentationHead",
    "Stage",
    "as_model",
    "feature_stages",
    "own_segmentation",
    "resolve_device",
]

ASSUMED_NOTE = ("preprocess: ImageNet defaults assumed ({}); pass preprocess=None to feed the "
                "input as given, or Model.wrap(module, preprocess=...)")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or ``"auto"`` (CUDA when available, else the
    CPU); None means the CPU. A device this machine lacks is a ConfigError.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"Unknown device {printable(str(device))!r}: use cpu, cuda, cuda:N, mps "
                          "or auto.") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{dev}' asked for, but CUDA is not available here "
                              "(torch.cuda.is_available() is False); use --device cpu.")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device '{dev}' asked for, but this machine has {count} CUDA "
                              f"device(s) (cuda:0..cuda:{count - 1}).")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but Apple's MPS is not available here; use "
                          "--device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{dev}' is not supported: use cpu, cuda, cuda:N, mps or auto.")
    return dev


@dataclass(eq=False)
class SegmentationHead:
    """A network's own per-pixel classifier.

    Attributes:
        apply: ``apply(batch, maps) -> logits (N, K, h, w)``; ``maps`` are the outputs of
            ``layers`` from the same forward pass (empty when ``layers`` is empty).
        layers: the backbone layers the head reads (the bundled model's four blocks), so one
            pass can feed the classifier and the head; empty for a whole segmentation network.
        classes: one name per output channel, or None to derive them from the categories.
        kind: ``"segmentation head"`` or ``"segmentation network"``.
    """

    apply: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]
    layers: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    kind: str = "segmentation head"


@dataclass(frozen=True)
class Stage:
    """The end of one stage of a network: the layer, its maps and what one value sees.

    Attributes:
        name: the layer (``named_modules()`` path).
        channels: maps at that layer.
        shape: ``(C, H, W)`` at the input size the stages were measured at.
        stride: total stride (input pixels per map pixel), None when not exact.
        field: receptive field label (``"field 68 px"``), ``""`` where unknown.
    """

    name: str
    channels: int
    shape: tuple[int, ...]
    stride: float | None
    field: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "shape": list(self.shape),
                "stride": self.stride, "field": self.field}


@dataclass
class Prepared:
    """A batch ready for a network and what it came from.

    Attributes:
        batch: ``(N, C, H, W)`` on the model's device, normalised as the model expects.
        images: ``(N, C, H, W)`` values in ``[0, 1]`` before normalisation (for pictures), or
            None when a tensor was given and the model has no normalisation to undo.
        notes: what preprocessing did that the user may not expect.
    """

    batch: torch.Tensor
    images: np.ndarray | None
    notes: list[str] = field(default_factory=list)

    def picture(self, index: int = 0) -> np.ndarray:
        """Image ``index`` as ``(3, H, W)`` float32 in ``[0, 1]`` for drawing."""
        image = self.images[index] if self.images is not None else np.clip(
            self.batch[index].detach().float().cpu().numpy(), 0, 1)
        if image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        return np.ascontiguousarray(image, dtype=np.float32)


@dataclass(eq=False)
class Model:
    """A network ready to use, and what was loaded and assumed.

    Attributes:
        module: the ``nn.Module``.
        name: the name it was loaded by (``"resnet18"``, ``"timm:convnext_tiny"``, ``"shapes"``)
            or the class name of a module passed in.
        preprocess: what an image must go through before the network (resize, crop, normalise).
        categories: the class names, or None when the weights carry none.
        task: ``"classification"``, ``"segmentation"`` or ``"other"``.
        weights: what was loaded: ``"random init"``, ``"DEFAULT (ResNet18_Weights.IMAGENET1K_V1)"``,
            a file path, ``"state dict"``, ``"bundled"`` or ``"as given"``.
        notes: plain sentences on what was assumed (random weights, preprocessing, categories).
        segmentation: the network's own per-pixel classifier, if it has one.
        prefix_tokens: class/register tokens in front of a transformer's patch tokens, if known.
        stage_layers: the layers that end each stage, when the network says (timm's
            ``feature_info``, the bundled model's blocks); else derived by :meth:`stages`.
    """

    module: nn.Module = field(repr=False)
    name: str
    preprocess: Preprocess
    categories: tuple[str, ...] | None = field(default=None, repr=False)
    task: str = "other"
    weights: str = "as given"
    notes: list[str] = field(default_factory=list)
    segmentation: SegmentationHead | None = field(default=None, repr=False)
    prefix_tokens: int | None = None
    assumed_preprocess: bool = field(default=False, repr=False)
    stage_layers: tuple[str, ...] | None = field(default=None, repr=False)
    _stages: dict = field(default_factory=dict, repr=False)

    @classmethod
    def wrap(cls, module: nn.Module, *, preprocess: Preprocess | None = None,
             categories: Sequence[str] | None = None, name: str | None = None,
             task: str | None = None) -> Model:
        """Any ``nn.Module`` as a :class:`Model`.

        Args:
            module: the network (its mode is left alone: the engine runs it in eval mode).
            preprocess: what images need (default: ImageNet's resize 256, crop 224 and
                normalisation, with a note saying it was assumed).
            categories: class names, one per output of the classifier.
            name: a name for messages (default: the class name).
            task: ``"classification"``, ``"segmentation"`` or ``"other"`` (default: guessed:
                segmentation for torchvision's segmentation networks and modules with a
                ``segment`` method, else other).

        Example:
            >>> m = Model.wrap(torchvision.models.resnet18(), categories=None)  # doctest: +SKIP
        """
        if not isinstance(module, nn.Module):
            raise ConfigError(f"Model.wrap takes an nn.Module, got {type(module).__name__}.")
        notes = []
        assumed = preprocess is None
        if assumed:
            preprocess = Preprocess()
            notes.append(ASSUMED_NOTE.format(preprocess.describe()))
        head = own_segmentation(module)
        guessed = "segmentation" if head is not None else "other"
        return cls(module, name or type(module).__name__, preprocess,
                   tuple(categories) if categories is not None else None, task or guessed,
                   "as given", notes, head, getattr(module, "num_prefix_tokens", None), assumed,
                   feature_stages(module))

    # ----------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Where the module's parameters are."""
        return device_of(self.module)

    def to(self, device: str | torch.device | None) -> Model:
        """Move the module to ``device`` (see :func:`resolve_device`); returns the model."""
        self.module.to(resolve_device(device))
        return self

    @property
    def input_size(self) -> tuple[int, int]:
        """The input ``(H, W)`` the preprocessing gives (224 x 224 when it keeps the size)."""
        side = self.preprocess.crop or self.preprocess.resize or 224
        return side, side

    @property
    def cam_head(self) -> tuple[str, str] | None:
        """``(pool, fc)``: a global average pool followed, last, by a Linear layer (what classic
        CAM needs, as ResNet's ``avgpool``/``fc``), or None."""
        modules = list(self.module.named_modules())
        linear = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Linear)]
        pools = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.AdaptiveAvgPool2d)
                 and m.output_size in (1, (1, 1)) and linear and i < linear[-1]]
        return (modules[pools[-1]][0], modules[linear[-1]][0]) if pools else None

    def resolve(self, layers: str | Sequence[str]) -> list[str]:
        """Layer names, globs or regexes as ``named_modules()`` paths (did-you-mean on a miss);
        one string may name several, separated by commas (``"layer1,layer3"``).

        Raises:
            ConfigError: an empty request (``[]``, ``""`` or ``","``).
        """
        requested = layers.split(",") if isinstance(layers, str) else list(layers)
        requested = [x.strip() if isinstance(x, str) else x for x in requested]
        requested = [x for x in requested if x != ""]
        if not requested:
            raise ConfigError(f"no layer given: name at least one layer of {self.name} (e.g. "
                              f"'{self._example_layer()}'; 'featuremap layers {self.name}' lists "
                              "them).")
        return resolve_layers(self.module, requested, model_name=self.name or None)

    def _example_layer(self) -> str:
        try:
            return self.stages()[-1].name
        except Exception:  # noqa: BLE001 - only an example for a message
            return next((n for n, _ in self.module.named_modules() if n), "layer")

    def one_layer(self, layer: str) -> str:
        """The one ``named_modules()`` path that ``layer`` names (a glob matching several is
        refused)."""
        if not isinstance(layer, str) or not layer.strip():
            raise ConfigError(f"layer must be a layer name such as '{self._example_layer()}', "
                              f"got {layer!r}.")
        names = self.resolve([layer])
        if len(names) != 1:
            raise ConfigError(f"layer '{layer}' matches {len(names)} layers ("
                              f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
                              "name exactly one.")
        return names[0]

    # --------------------------------------------------------------------------- stages
    def stage_names(self, input_size: int | tuple[int, int] | None = None) -> list[str]:
        """The layers that end each stage, low to high: as the network says, or derived from
        one shape pass (cached)."""
        if self.stage_layers:
            return list(self.stage_layers)
        return [s.name for s in self.stages(input_size)]

    def stages(self, input_size: int | tuple[int, int] | None = None) -> tuple[Stage, ...]:
        """The end of each stage, low to high, with channels, stride and receptive field.

        Computed once per input size (one shape pass and one trace) and cached.

        Raises:
            ConfigError: a model without any layer of spatial maps.
        """
        from featuremap.receptive import field_label, receptive_fields
        from featuremap.summary import list_layers, overview_layers

        size = size_pair(input_size) if input_size is not None else self.input_size
        if size not in self._stages:
            listed = list_layers(self.module, input_size=size,
                                 in_channels=self.preprocess.channels)
            names = list(self.stage_layers) if self.stage_layers else overview_layers(
                self.module, infos=listed)
            infos = {i.name: i for i in listed}
            try:
                fields = receptive_fields(self, input_size=size)
            except ConfigError:
                fields = {}
            self._stages[size] = tuple(
                Stage(n, *self._map_shape(n, infos[n].output_shape, size),
                      field_label(fields.get(n)))
                for n in names if infos[n].output_shape)
        return self._stages[size]

    def _map_shape(self, name: str, shape: tuple[int, ...], size: tuple[int, int]
                   ) -> tuple[int, tuple[int, ...], float | None]:
        """``(channels, (C, H, W), stride)`` of an output of ``shape`` (no batch dim) laid out
        as maps (channels last and tokens too); the shape as it is when it is not a map."""
        from featuremap.layouts import layout_of

        module = dict(self.module.named_modules())[name]
        layout = layout_of((1, *shape), module, batch=1, size=size,
                           prefix_hint=self.prefix_tokens)
        if not layout.is_map:
            return shape[0], shape, None
        (h, w), c = layout.grid, shape[-1] if layout.kind != "NCHW" else shape[0]
        ratio = size[0] / h
        stride = None if ratio != size[1] / w else int(ratio) if ratio.is_integer() else round(
            ratio, 3)
        return c, (c, h, w), stride

    # ----------------------------------------------------------------------- running it
    def prepare(self, images: Any, *, preprocess: Preprocess | str | None = "model"
                ) -> Prepared:
        """Turn images into the batch the network takes, on the model's device.

        Args:
            images: a path, ``"sample:NAME"``, PIL image, array, bytes, a list of them, or a
                tensor ``(N, C, H, W)`` / ``(C, H, W)`` that is already prepared (used as it
                is).
            preprocess: ``"model"`` (the model's own), a :class:`Preprocess`, or None (no
                resize, crop or normalisation: values in ``[0, 1]`` at the image's own size).
        """
        device = self.device
        notes: list[str] = []
        if isinstance(images, torch.Tensor):
            batch = images if images.dim() == 4 else images.unsqueeze(0)
            if batch.dim() != 4:
                raise ConfigError(f"a tensor input must be (N, C, H, W) or (C, H, W), got "
                                  f"{tuple(images.shape)}.")
            return Prepared(batch.to(device), self._unnormalise(batch, preprocess), notes)
        pre = self._preprocess(preprocess, notes)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ConfigError("no images given.")
        loaded = []
        for i, item in enumerate(items):
            image, said = pre.prepare(item, label="the image" if len(items) == 1 else
                                      f"image {i}")
            loaded.append(image)
            notes += said
        sizes = {im.shape for im in loaded}
        if len(sizes) > 1:
            raise ConfigError(f"the images differ in size after preprocessing ("
                              f"{', '.join(map(str, sizes))}); give a crop size or pass them "
                              "one at a time.")
        raw = np.stack(loaded)
        normalised = raw if preprocess is None else np.stack([pre.normalise(im) for im in loaded])
        return Prepared(torch.from_numpy(normalised).to(device), raw, notes)

    def _preprocess(self, preprocess: Preprocess | str | None, notes: list[str]) -> Preprocess:
        if preprocess is None:
            return Preprocess(resize=None, crop=None, mean=(0.0,) * self.preprocess.channels,
                              std=(1.0,) * self.preprocess.channels,
                              channels=self.preprocess.channels)
        if isinstance(preprocess, Preprocess):
            return preprocess
        if preprocess != "model":
            raise ConfigError(f"preprocess must be 'model', a Preprocess or None, got "
                              f"{preprocess!r}.")
        if self.assumed_preprocess:
            notes.append(ASSUMED_NOTE.format(self.preprocess.describe()))
        return self.preprocess

    def _unnormalise(self, batch: torch.Tensor, preprocess: Any) -> np.ndarray | None:
        """A prepared tensor's values before normalisation, for pictures (None if unknown)."""
        pre = preprocess if isinstance(preprocess, Preprocess) else self.preprocess
        if preprocess is None or batch.shape[1] != len(pre.mean):
            return None
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
        shown = batch.detach().float().cpu() * std  # one new tensor, then in place
        return shown.add_(mean).clamp_(0, 1).numpy()

    def capture(self, layers: Sequence[str], **options: Any) -> Capture:
        """The engine for this model's (resolved) ``layers``; options as :class:`Capture`."""
        return Capture(self.module, layers, model_name=self.name,
                       prefix_tokens=self.prefix_tokens, **options)

    def depth(self, layer: str, input_size: int | tuple[int, int] | None = None) -> int:
        """The channels of ``layer``'s maps (a resolved name), from one early-stopped pass on a
        blank input of ``input_size`` (default: :attr:`input_size`).

        Raises:
            ConfigError: a layer whose output is not feature maps (with the reason).
        """
        size = self.input_size if input_size is None else size_pair(input_size)
        got = self.capture([layer])(blank_input(self.module, (1, self.preprocess.channels,
                                                               *size)))
        got.map(layer)  # a ConfigError when the layer gives no maps
        return int(got.meta[layer].shape[1])


def feature_stages(module: nn.Module) -> tuple[str, ...] | None:
    """The stage ends a network declares itself: timm's ``feature_info`` (its ``module`` names,
    where they are layers of the module), else None."""
    info = getattr(module, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    names = {n for n, _ in module.named_modules() if n}
    stages = tuple(d.get("module") for d in info if isinstance(d, dict))
    return stages if stages and all(s in names for s in stages) else None


def as_model(model: Any) -> Model:
    """A :class:`Model` as it is; an ``nn.Module`` wrapped (ImageNet preprocessing assumed, with
    a note); anything else refused."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nn.Module):
        return Model.wrap(model)
    raise ConfigError(f"model must be an nn.Module or a model from featuremap.load_model(), got "
                      f"{type(model).__name__}.")


def own_segmentation(module: nn.Module) -> SegmentationHead | None:
    """The segmentation a module does itself (None when it has none): a ``segment`` method, or
    torchvision's networks."""
    if callable(getattr(module, "segment", None)):
        return SegmentationHead(lambda x, _maps: module.segment(x))
    try:
        from torchvision.models.segmentation import LRASPP
        from torchvision.models.segmentation._utils import _SimpleSegmentationModel
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    if isinstance(module, (_SimpleSegmentationModel, LRASPP)):
        return SegmentationHead(lambda x, _maps: module(x), kind="segmentation network")
    return None
