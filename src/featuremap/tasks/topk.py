"""Object recognition: the top classes of one image, with softmax probabilities.

:func:`classify` runs the model once and lists the ``top`` classes, best first. The helpers here
(:func:`one_image`, :func:`logits_of`, :func:`class_names`, :func:`class_index`) are shared by
the class-activation maps and the one-pass analysis.

Models are :class:`featuremap.model.Model` objects (from :func:`featuremap.load_model`) or plain
``nn.Module`` objects (wrapped with ImageNet preprocessing; classes named ``class i``). Images are
anything :meth:`featuremap.model.Model.prepare` takes: a path, ``"sample:NAME"``, a PIL image, an
array or a tensor that is already preprocessed (used as it is).

Example:
    >>> print(classify(load_model("shapes"), make_scene(50_000).image, top=3))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featuremap.errors import ConfigError, printable, unknown_name
from featuremap.model import Model, Prepared, as_model

__all__ = [
    "Classification",
    "class_names",
    "classify",
    "logits_of",
    "one_image",
    "pick_class",
]

NO_CLASSIFIER_FIX = (
    "use a classification model (e.g. 'shapes' or 'resnet18'), or featuremap.tasks.segnets for "
    "per-pixel classes"
)


def one_image(model: Any, image: Any, *, classifier: bool = True, prepare: bool = True
              ) -> tuple[Model, Prepared | None]:
    """The model and one prepared image (a batch of one; None when ``prepare`` is False); a
    segmentation model is refused when a classifier is needed."""
    m = as_model(model)
    if classifier and m.task == "segmentation":
        raise ConfigError(f"Model '{m.name}' is a segmentation model and has no classifier (no "
                          f"class scores per image): {NO_CLASSIFIER_FIX}.")
    if not prepare:
        return m, None
    prepared = m.prepare(image)
    if prepared.batch.shape[0] != 1:
        raise ConfigError(f"one image at a time, please: got a batch of "
                          f"{prepared.batch.shape[0]}.")
    return m, prepared


def logits_of(m: Model, output: Any) -> torch.Tensor:
    """The (N, K) class scores of a forward pass, or a ConfigError saying there are none."""
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 1:
        return output
    found = (f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
             else type(output).__name__)
    raise ConfigError(f"Model '{m.name}' has no classifier: its output is {found}, not class "
                      f"scores (N, K); {NO_CLASSIFIER_FIX}.")


def class_names(m: Model, k: int) -> tuple[tuple[str, ...], str]:
    """The model's categories when they fit K, else ``class i`` (and a note saying why)."""
    categories = m.categories
    if categories is not None and len(categories) == k:
        return tuple(categories), ""
    names = tuple(f"class {i}" for i in range(k))
    if categories is None:
        return names, "the weights carry no category names: classes are named 'class i'"
    return names, (f"{len(categories)} category names for {k} outputs: classes are named "
                   "'class i'")


def pick_class(index: int | str | None, logits: torch.Tensor, names: Sequence[str]) -> int:
    """The requested class (an index or a name), or the predicted one."""
    k = logits.shape[-1]
    if index is None:
        return int(logits[0].argmax())
    if isinstance(index, str):
        lowered = [n.lower() for n in names]
        if index.lower() in lowered:
            return lowered.index(index.lower())
        raise unknown_name("class", printable(index), names, hint=f"The model has {k} classes.")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < k:
        raise ConfigError(f"class_index must be an integer in [0, {k - 1}] or a class name, "
                          f"got {index!r}.")
    return int(index)


def check_finite(m: Model, logits: torch.Tensor) -> None:
    """Class scores with NaN or infinity rank nothing: say so instead of ranking them."""
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError(f"Model '{m.name}' gives NaN or infinite class scores on this image "
                          "(its weights or the input hold NaN/inf): nothing to rank. Check the "
                          "weights (--weights) and the image.")


@dataclass
class Classification:
    """The classes a model sees in one image.

    Attributes:
        top: ``(index, name, probability)`` best first.
        logits: the classifier's output ``(K,)`` (before softmax), on the CPU.
        model_name: the model's name.
        notes: what was assumed (class names, a ``top`` clamped to K).
    """

    top: list[tuple[int, str, float]]
    logits: torch.Tensor = field(repr=False)
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of :attr:`logits`, ``(K,)``."""
        return torch.softmax(self.logits.float(), dim=-1)

    def __str__(self) -> str:
        width = max([5] + [len(printable(name)) for _, name, _ in self.top])
        lines = [f"{printable(self.model_name)}: top {len(self.top)} of "
                 f"{self.logits.shape[-1]} classes",
                 f"{'rank':>4}  {'index':>5}  {'class':<{width}}  probability"]
        lines += [f"{r:>4}  {i:>5}  {printable(name):<{width}}  {p:11.4f}"
                  for r, (i, name, p) in enumerate(self.top, start=1)]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "classes": int(self.logits.shape[-1]),
                "top": [{"index": i, "name": n, "probability": p} for i, n, p in self.top],
                "notes": list(self.notes)}


def classify(model: Any, image: Any, *, top: int = 5) -> Classification:
    """The ``top`` classes of one image, best first, with softmax probabilities.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module`` (wrapped with
            ImageNet preprocessing; classes named ``class i``).
        image: one image: a path, ``"sample:NAME"``, PIL image, array, or a preprocessed tensor
            ``(1, C, H, W)`` / ``(C, H, W)``.
        top: how many classes to list (>= 1); more than the model has (K) is clamped to K and
            a note says so.

    Returns:
        A :class:`Classification` (``print()`` it for a table).

    Raises:
        ConfigError: a model without a classifier (a segmentation model, or an output that is
            not ``(N, K)``), ``top < 1``, more than one image, NaN scores.

    Example:
        >>> result = classify(load_model("shapes"), make_scene(50_000).image, top=2)
        >>> result.top[0][:2]
        (0, 'circle')
    """
    check_top(top)
    m, prepared = one_image(model, image)
    got = m.capture([], early_stop=False)(prepared.batch)
    result = classification(m, logits_of(m, got.output), top)
    result.notes[:0] = prepared.notes + got.notes
    return result


def check_top(top: Any) -> None:
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ConfigError(f"top must be an integer >= 1, got {top!r}.")


def classification(m: Model, logits: torch.Tensor, top: int) -> Classification:
    """Top-k of a batch of one's logits ``(1, K)`` (shared with the one-pass analysis)."""
    check_finite(m, logits)
    logits = logits[0].detach().float().cpu()
    k = logits.shape[0]
    names, note = class_names(m, k)
    notes = [note] if note else []
    if top > k:
        notes.append(f"top={top} clamped to the {k} classes of the model")
    probs = torch.softmax(logits, dim=0)
    values, indices = probs.topk(min(int(top), k))
    best = [(int(i), names[int(i)], float(p)) for p, i in zip(values, indices)]
    return Classification(best, logits, m.name, notes)
