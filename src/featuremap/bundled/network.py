"""ShapesNet: the small bundled CNN, one shared backbone with a recognition and a segmentation head.

The backbone is TinyVGG-like: four blocks of two 3x3 convolutions (each followed by batch norm and
an in-place ReLU); blocks 1-3 end with a 2x2 max pool, so the last maps are 1/8 of the input.
``classifier`` is global average pooling + one linear layer, so a class-activation map is the
classifier's weights times the last backbone maps. ``segmenter`` is a light FCN-style head: 1x1
projections of every block's maps, upsampled to the input size and added to a small full-resolution
stem on the image, then one 3x3 layer sharpens the edges and a 1x1 layer gives per-pixel logits.

Layer names (``named_modules()``)::

    backbone.block1.conv1 .bn1 .relu1 .conv2 .bn2 .relu2 .pool     (N, 16, H/2, W/2)
    backbone.block2....                                            (N, 32, H/4, W/4)
    backbone.block3....                                            (N, 64, H/8, W/8)
    backbone.block4.conv1 .bn1 .relu1 .conv2 .bn2 .relu2 (no pool) (N, 128, H/8, W/8)
    classifier.pool, classifier.flatten, classifier.fc             (N, K)
    segmenter.stem, segmenter.lateral1..4, segmenter.fuse, segmenter.refine, segmenter.head

:func:`bundled` returns the shipped, trained model and its metadata.

Example:
    >>> model, meta = bundled()
    >>> x = torch.zeros(1, 3, 64, 64)
    >>> model(x).shape, model.segment(x).shape
    (torch.Size([1, 7]), torch.Size([1, 8, 64, 64]))
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from featuremap.errors import ConfigError
from featuremap.model import SegmentationHead

__all__ = [
    "CATEGORIES",
    "MEAN",
    "SEGMENTATION_CLASSES",
    "STD",
    "ShapesNet",
    "bundled",
    "normalize",
    "segmentation_head",
    "weights_path",
]

# Kept equal to featuremap.bundled.scenes.CLASSES (checked by the tests); this module imports
# torch only.
SEGMENTATION_CLASSES = (
    "background", "circle", "square", "triangle", "star", "cross", "ring", "crescent",
)
CATEGORIES = SEGMENTATION_CLASSES[1:]
# Per-channel mean and std of the synthetic scenes (measured on 5,000 scenes, rounded).
MEAN = (0.5, 0.5, 0.5)
STD = (0.26, 0.26, 0.26)
WIDTHS = (16, 32, 64, 128)
_DATA = Path(__file__).resolve().parent / "data"


def _block(c_in: int, c_out: int, *, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (a, b) in enumerate(((c_in, c_out), (c_out, c_out)), start=1):
        layers[f"conv{i}"] = nn.Conv2d(a, b, 3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(b)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class Segmenter(nn.Module):
    """FCN-style head: per-block 1x1 projections, upsampled and added to a full-resolution stem."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, hidden, 3, padding=1), relu=nn.ReLU(inplace=True)))
        for i, w in enumerate(widths, start=1):
            setattr(self, f"lateral{i}", nn.Conv2d(w, hidden, 1, bias=False))
        self.fuse = nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(hidden), relu=nn.ReLU()))
        self.refine = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(hidden, hidden, 3, padding=1), relu=nn.ReLU(inplace=True)))
        self.head = nn.Conv2d(hidden, num_classes, 1)
        self.levels = len(widths)

    def forward(self, x: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """Per-pixel logits ``(N, num_classes, H, W)`` from the image and the block outputs."""
        y = None
        for i in range(len(maps), 0, -1):  # top-down: coarse maps first, upsampled as needed
            lateral = getattr(self, f"lateral{i}")(maps[i - 1])
            y = lateral if y is None else lateral + _resize(y, lateral.shape[-2:])
        y = self.stem(x) + _resize(y, x.shape[-2:])
        return self.head(self.refine(self.fuse(y)))


def _resize(y: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if y.shape[-2:] == size:
        return y
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ShapesNet(nn.Module):
    """A TinyVGG-like CNN with one backbone, a recognition head and a segmentation head.

    Inputs are normalised images ``(N, 3, H, W)`` (see :data:`MEAN`, :data:`STD` and
    :func:`normalize`); any ``H, W`` >= 8 works, the bundled weights were trained on 64x64.

    Args:
        num_classes: classes of the recognition head (the segmentation head has one more:
            background).
        widths: channels of the four backbone blocks.

    Example:
        >>> net = ShapesNet()
        >>> logits, seg = net.forward_all(torch.zeros(2, 3, 64, 64))
        >>> tuple(logits.shape), tuple(seg.shape)
        ((2, 7), (2, 8, 64, 64))
    """

    def __init__(self, num_classes: int = len(CATEGORIES),
                 widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        if num_classes < 1 or len(widths) < 2:
            raise ConfigError(f"ShapesNet needs num_classes >= 1 and >= 2 blocks, got "
                              f"{num_classes} classes and widths {tuple(widths)}.")
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = 3
        for i, w in enumerate(widths, start=1):
            blocks[f"block{i}"] = _block(c_in, w, pool=i < len(widths))
            c_in = w
        self.backbone = nn.Sequential(blocks)
        self.classifier = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(c_in, num_classes)))
        self.segmenter = Segmenter(tuple(widths), num_classes + 1)
        self.num_classes = num_classes
        self.mean, self.std = MEAN, STD

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 8:
            raise ConfigError(f"ShapesNet expects images (N, 3, H, W) with H, W >= 8, got "
                              f"{tuple(x.shape)}.")
        maps = []
        for block in self.backbone:
            x = block(x)
            maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last backbone maps ``(N, 128, H/8, W/8)`` (what the classifier pools)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Recognition logits ``(N, K)`` for normalised images ``(N, 3, H, W)``."""
        return self.classifier(self.features(x))

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(N, K + 1, H, W)``; channel 0 is background."""
        return self.segmenter(x, self.pyramid(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads from one backbone pass: ``(logits (N, K), seg_logits (N, K + 1, H, W))``."""
        maps = self.pyramid(x)
        return self.classifier(maps[-1]), self.segmenter(x, maps)

    def cam(self, x: torch.Tensor, class_index: torch.Tensor | int | None = None) -> torch.Tensor:
        """Class-activation maps ``(N, H/8, W/8)``: classifier weights times the last maps.

        ``class_index`` defaults to the predicted class of each image.
        """
        maps = self.features(x)
        logits = self.classifier(maps)
        if class_index is None:
            class_index = logits.argmax(1)
        index = torch.as_tensor(class_index).expand(x.shape[0])
        weights = self.classifier.fc.weight[index]  # (N, C)
        return torch.einsum("nc,nchw->nhw", weights, maps)


def segmentation_head(model: ShapesNet) -> SegmentationHead:
    """The model's segmentation head as a capability: it reads every backbone block's maps, so
    one backbone pass feeds both heads (:func:`featuremap.tasks.shared.analyse`)."""
    layers = tuple(f"backbone.{name}" for name, _ in model.backbone.named_children())
    return SegmentationHead(lambda x, maps: model.segmenter(x, list(maps)), layers,
                            SEGMENTATION_CLASSES)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> torch.Tensor:
    """Normalise images ``(N, 3, H, W)`` in ``[0, 1]`` per channel (:data:`MEAN`, :data:`STD`).

    Example:
        >>> normalize(torch.full((1, 3, 2, 2), 0.5)).abs().max().item()
        0.0
    """
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def weights_path() -> Path:
    """Where the bundled weights live: ``featuremap/data/shapes.safetensors``."""
    return _DATA / "shapes.safetensors"


def bundled() -> tuple[ShapesNet, dict]:
    """The shipped ShapesNet, trained on synthetic scenes, in eval mode, with its metadata.

    Returns:
        ``(model, meta)``; ``meta`` holds ``categories`` (recognition classes),
        ``segmentation_classes``, ``config`` (ShapesNet's arguments), ``input_size``, ``mean``,
        ``std``, ``recipe`` (how it was trained) and ``metrics`` (held-out accuracy and mIoU,
        with the seed and n they used).

    Example:
        >>> model, meta = bundled()
        >>> meta["categories"][:3]
        ['circle', 'square', 'triangle']
    """
    from safetensors.torch import load_file

    meta = json.loads((_DATA / "shapes.json").read_text())
    model = ShapesNet(**meta["config"])
    model.load_state_dict(load_file(str(weights_path())))
    model.mean, model.std = tuple(meta["mean"]), tuple(meta["std"])
    return model.eval(), meta
