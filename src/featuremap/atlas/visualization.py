"""Feature visualisation: images that drive one channel of a layer as hard as they can.

:func:`visualize` follows the Lucid/Lucent recipe (Olah et al., "Feature Visualization",
Distill 2017) on plain torch:

- the image is parametrised in a decorrelated Fourier basis: a learnable spectrum, scaled by
  ``1 / frequency`` (so low frequencies move first), turned into pixels by an orthonormal inverse
  FFT, mixed across colour channels by the square root of ImageNet's colour correlation
  (Lucid's ``color_correlation_svd_sqrt``) and squashed into ``[0, 1]`` by a sigmoid;
- every step the image is jittered (up to 8, then 4 pixels), scaled (0.95 to 1.05) and rotated
  (-5 to 5 degrees), in one ``affine_grid``/``grid_sample`` per image, grey outside the image,
  so the result must hold up under small moves instead of exploiting one pixel grid;
- the model's own normalisation is applied inside, and the objective is the channel's mean
  activation at the layer (through the capture engine with ``keep="graph"``: the forward pass
  stops at the layer), maximised with Adam (learning rate 0.05);
- a channel that is zero everywhere on the near-grey starting image has no gradient: while that
  is so, every ``nn.ReLU`` module also lets the gradient through where it would raise its input,
  for the images where nothing else flows (Lucid's redirected ReLU gradient), which wakes it;
- several channels are optimised together, one image per channel in one batch, the objectives
  summed: each image has its own random draws (seeded by the seed and its channel), so its
  result does not depend on which channels share its batch (apart from rounding: a batched
  convolution may round differently), and the cost of a step is shared.

The same seed gives the same images: the random draws come from seeded ``torch.Generator``
objects, and every step on the CPU is reproducible as it is (tested). On a GPU torch's
deterministic algorithms are switched on for the call only (a process-wide switch, so it is left
alone on the CPU); ``grid_sample``'s backward has no deterministic CUDA kernel and torch warns.

Example:
    >>> v = visualize(load_model("shapes"), layer="backbone.block4", channels=[0, 5], size=64,
    ...               steps=128)  # doctest: +SKIP
    >>> v.images.shape  # doctest: +SKIP
    (2, 3, 64, 64)
    >>> print(v)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.budget import check_size
from featuremap.capture import Capture, inference_state, trace_shapes
from featuremap.errors import ConfigError, printable
from featuremap.model import ASSUMED_NOTE, Model, as_model

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "Visualization",
    "check_render",
    "plot_visualizations",
    "visualize",
]

COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
"""Lucid's square root of ImageNet's colour correlation: maps decorrelated colour to RGB."""
CUDA_NOTE = ("on CUDA the same seed gives somewhat different images from run to run "
             "(grid_sample's backward has no deterministic kernel); on the CPU the same ones")
SIZE_RANGE = (16, 1024)
STEPS_RANGE = (1, 10_000)
LEARNING_RATE = 0.05
SPECTRUM_SD = 0.01  # Lucid's initial spread of the spectrum: a near-grey, faintly noisy start
FFT_MAGIC = 4.0  # Lucid divides the inverse FFT by 4 before the sigmoid
JITTER = (8, 4)  # pixels, before and after scale and rotation, as Lucid's standard transforms
SCALES = tuple(1 + (i - 5) / 100 for i in range(11))  # 0.95 .. 1.05
ANGLES = tuple(range(-5, 6))  # degrees


@dataclass
class Visualization:
    """Images rendered to drive channels of one layer, and how hard they drive them.

    Attributes:
        model_name, layer: where the channels are.
        channels: the channels, one image each, in request order.
        images: ``(N, 3, size, size)`` float32 in ``[0, 1]`` (before the model's normalisation).
        activation: ``(N,)`` each channel's mean activation over the layer's map for its final
            image (as rendered, without jitter, scale or rotation).
        start: ``(N,)`` the same for its starting image (the noise the optimisation began from).
        size, steps, seed: the settings.
        seconds: wall time of the whole call; ``seconds / N`` per channel.
        notes: what the caller should know (preprocessing assumed, modes restored).
    """

    model_name: str
    layer: str
    channels: tuple[int, ...]
    images: np.ndarray = field(repr=False)
    activation: np.ndarray
    start: np.ndarray
    size: int
    steps: int
    seed: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_per_channel(self) -> float:
        """Wall time per channel: the call's time divided by the channels optimised together."""
        return self.seconds / max(1, len(self.channels))

    def __str__(self) -> str:
        lines = [f"feature visualisation of {printable(self.model_name)} "
                 f"{printable(self.layer)}: {len(self.channels)} channel(s), {self.size} x "
                 f"{self.size} px, {self.steps} steps, seed {self.seed}",
                 f"{'channel':>7s}  {'start':>10s}  {'rendered':>10s}  {'gain':>7s}"]
        for c, a, s in zip(self.channels, self.activation, self.start):
            gain = f"{a / s:7.1f}x" if s > 0 else "      -"
            lines.append(f"{c:7d}  {s:10.4g}  {a:10.4g}  {gain}")
        lines.append(f"{self.seconds:.1f} s, {self.seconds_per_channel:.2f} s per channel")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        """The settings and the activations (the pixels are left out: ``images`` holds them)."""
        return {"model": self.model_name, "layer": self.layer, "channels": list(self.channels),
                "image_shape": list(self.images.shape), "activation": self.activation.tolist(),
                "start": self.start.tolist(), "size": self.size, "steps": self.steps,
                "seed": self.seed, "seconds": self.seconds,
                "seconds_per_channel": self.seconds_per_channel, "notes": list(self.notes)}

    def _repr_png_(self) -> bytes:
        from featuremap.report import png_bytes

        return png_bytes(plot_visualizations(self))


# ------------------------------------------------------------------------------ checks


def _bounded(name: str, value: Any, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            low <= value <= high):
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return int(value)


def _channel_list(channels: Any, depth: int, layer: str) -> tuple[int, ...]:
    """``channels`` (an int or a sequence of ints) checked against the layer's ``depth``."""
    items = [channels] if isinstance(channels, (int, np.integer)) else channels
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items or any(
            isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in items):
        raise ConfigError(f"channels must be a channel index or a list of them (0..{depth - 1} "
                          f"for '{layer}'), got {channels!r}.")
    bad = [int(c) for c in items if not 0 <= c < depth]
    if bad:
        raise ConfigError(f"channel {bad[0]} is outside the {depth} channels of '{layer}' "
                          f"(0..{depth - 1}).")
    if len(set(items)) != len(items):
        raise ConfigError(f"channels {list(items)} name a channel twice: each channel gets one "
                          "image, name it once.")
    return tuple(int(c) for c in items)


def check_render(size: Any, steps: Any, seed: Any) -> tuple[int, int, int]:
    """``(size, steps, seed)`` checked against their bounds (a ConfigError otherwise)."""
    return (_bounded("size", size, SIZE_RANGE), _bounded("steps", steps, STEPS_RANGE),
            _bounded("seed", seed, (0, 2**63 - 1)))


def _check_memory(m: Model, name: str, count: int, size: int) -> None:
    """Refuse a batch whose activations up to ``name`` (kept for the backward pass, with their
    gradients) would not fit; the estimate sums the outputs of the leaf modules that run up to
    the layer."""
    shapes = trace_shapes(m.module, (1, m.preprocess.channels, size, size))
    leaves = {n for n, mod in m.module.named_modules() if not any(True for _ in mod.children())}
    values = 0
    for layer, shape in shapes.items():
        if layer in leaves:
            values += math.prod(shape)
        if layer == name:
            break
    check_size(count * (values * 4 * 2 + size * size * 3 * 4 * 8),
               what=f"optimising {count} image(s) of {size} x {size} up to '{name}'",
               fix="visualise fewer channels per call or use a smaller size")


# ------------------------------------------------------------------------ the image


def _frequency_scale(size: int) -> torch.Tensor:
    """``(size, size // 2 + 1)``: 1 / frequency (decay power 1), the lowest frequency capped at
    one cycle per image, as Lucid's ``fft_image``."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    return 1.0 / torch.sqrt(fy * fy + fx * fx).clamp(min=1.0 / size)


def _colour_matrix(channels: int) -> torch.Tensor:
    """Lucid's colour decorrelation, normalised by its largest column norm; identity for
    images that are not RGB."""
    if channels != 3:
        return torch.eye(channels)
    svd_sqrt = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float32)
    return svd_sqrt / svd_sqrt.norm(dim=0).max()


class FourierImage:
    """A batch of images parametrised by a learnable spectrum in decorrelated colour.

    Args:
        generators: one seeded ``torch.Generator`` per image (its starting spectrum).
        channels, size: the images' channels and side.
        device: where the spectrum lives.
    """

    def __init__(self, generators: Sequence[torch.Generator], channels: int, size: int,
                 device: torch.device) -> None:
        self.size = size
        shape = (channels, size, size // 2 + 1, 2)
        spectrum = torch.stack([torch.randn(shape, generator=g) for g in generators])
        self.spectrum = (spectrum * SPECTRUM_SD).to(device).requires_grad_(True)
        self.scale = _frequency_scale(size).to(device)[None, None, :, :, None]
        self.colour = _colour_matrix(channels).to(device)

    def __call__(self) -> torch.Tensor:
        """The images ``(N, C, size, size)`` in ``[0, 1]``."""
        spectrum = torch.view_as_complex(self.scale * self.spectrum)
        decorrelated = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        decorrelated = decorrelated / FFT_MAGIC
        rgb = torch.matmul(self.colour, decorrelated.flatten(2)).view_as(decorrelated)
        return torch.sigmoid(rgb)


def _pick(options: Sequence[float], g: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=g))])


def _shift(limit: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(-limit, limit + 1, (2,), generator=g).double()


def _affine(generators: Sequence[torch.Generator], size: int) -> torch.Tensor:
    """``(N, 2, 3)`` one random jitter, scale, rotation and jitter per image, as the
    ``affine_grid`` matrix that maps output to input coordinates (in units of half the
    image)."""
    thetas = []
    for g in generators:
        first, scale = _shift(JITTER[0], g), _pick(SCALES, g)
        angle, second = math.radians(_pick(ANGLES, g)), _shift(JITTER[1], g)
        c, s = math.cos(angle) / scale, math.sin(angle) / scale
        turn = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        # input = turn @ (output - second) - first, with shifts in pixels -> units of size / 2
        offset = -(turn @ second + first) * 2 / size
        thetas.append(torch.cat([turn, offset[:, None]], 1))
    return torch.stack(thetas).float()


def _transform(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``images`` moved by ``theta``; grey (0.5) where a pixel comes from outside the image."""
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + 0.5


# ------------------------------------------------------------------------ the objective


def _generators(seed: int, channels: Sequence[int]) -> list[torch.Generator]:
    """One generator per channel, seeded by ``(seed, channel)``: an image's draws do not depend
    on the other channels of its batch."""
    out = []
    for c in channels:
        state = np.random.SeedSequence((seed, c)).generate_state(2, dtype=np.uint32)
        out.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return out


class _Objective:
    """Each image's channel mean at the layer, through the engine (the pass stops there)."""

    def __init__(self, m: Model, name: str, channels: Sequence[int], *, keep: str) -> None:
        self.engine: Capture = m.capture([name], keep=keep)
        self.name = name
        self.rows = torch.arange(len(channels))
        self.channels = torch.tensor(channels)
        pre = m.preprocess
        self.mean = torch.tensor(pre.mean, dtype=torch.float32, device=m.device).view(1, -1, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32, device=m.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N,)`` channel means of ``images`` in ``[0, 1]``."""
        maps = self.engine((images - self.mean) / self.std).map(self.name)
        return maps[self.rows, self.channels].flatten(1).mean(1)


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image where nothing flows back through it, also reaches
    negative inputs when it would push them up (Lucid's ``redirected_relu_grad``): a channel
    that is zero everywhere on the starting image can still be woken up."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        negative = x < 0
        plain = grad.masked_fill(negative, 0)
        flows = plain.flatten(1).abs().amax(1) > 0
        if bool(flows.all()):
            return plain
        redirected = grad.masked_fill(negative & (grad > 0), 0)
        return torch.where(flows.view(-1, *[1] * (x.dim() - 1)), plain, redirected)


@contextmanager
def _redirected(relus: Sequence[torch.nn.ReLU]) -> Iterator[None]:
    """The ``nn.ReLU`` modules given run :class:`_RedirectedReLU` in the block (their own
    forward afterwards). A ReLU called as a function (``F.relu``) keeps its gradient."""
    try:
        for relu in relus:
            relu.forward = _RedirectedReLU.apply
        yield
    finally:
        for relu in relus:
            relu.__dict__.pop("forward", None)


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """On a GPU, torch's deterministic algorithms for the block, the previous settings
    restored. The switch is process-wide (a server's other threads would run under it), and on
    the CPU the ops used here are deterministic without it, so there it is left alone."""
    if device.type == "cpu":
        yield
        return
    import warnings

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        with warnings.catch_warnings():  # said once, as a note, not at every step
            warnings.filterwarnings("ignore", message=".*deterministic implementation.*")
            yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _optimise(m: Model, name: str, channels: tuple[int, ...], size: int, steps: int,
              seed: int, progress: Callable[[int, int], Any] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(final images, final activations, starting activations)``."""
    generators = _generators(seed, channels)
    image = FourierImage(generators, m.preprocess.channels, size, m.device)
    measure = _Objective(m, name, channels, keep="copy")
    objective = _Objective(m, name, channels, keep="graph")
    with torch.no_grad():
        start = measure(image())
    optimiser = torch.optim.Adam([image.spectrum], lr=LEARNING_RATE)
    relus = [mod for mod in m.module.modules() if isinstance(mod, torch.nn.ReLU)]
    asleep = bool((start <= 0).any())
    for step in range(steps):
        if progress is not None:
            progress(step, steps)
        optimiser.zero_grad(set_to_none=True)
        # while a channel is zero for its image, ReLUs let the gradient wake it (Lucid's
        # redirection); afterwards the plain gradient, which costs less
        with _redirected(relus) if asleep else nullcontext():
            score = objective(_transform(image(), _affine(generators, size)))
        (-score.sum()).backward()
        optimiser.step()
        asleep = bool((score <= 0).any())
    if progress is not None:
        progress(steps, steps)
    with torch.no_grad():
        final = image()
        return final, measure(final), start


def visualize(model: Any, *, layer: str, channels: int | Sequence[int], size: int = 128,
              steps: int = 256, seed: int = 0,
              progress: Callable[[int, int], Any] | None = None) -> Visualization:
    """Render, for each channel, an image that maximises its mean activation at ``layer``.

    Gradient ascent on a decorrelated Fourier parametrisation with random jitter, scale and
    rotation every step (the Lucid recipe; see the module docstring). All channels are
    optimised together as one batch, one image each.

    Args:
        model: a model from :func:`featuremap.load_model`, a :class:`~featuremap.model.Model` or
            an ``nn.Module`` (its preprocessing's mean and std are applied inside).
        layer: one layer whose output is feature maps.
        channels: a channel index or a list of distinct ones.
        size: image side in pixels (16 to 1024).
        steps: optimisation steps (1 to 10,000).
        seed: the images are the same for the same seed (and channel).
        progress: ``progress(steps done, steps)`` as the optimisation runs.

    Returns:
        :class:`Visualization`: the images ``(N, 3, size, size)`` in ``[0, 1]``, each channel's
        mean activation for its final and its starting image, the time taken.

    Raises:
        UnknownNameError: an unknown layer (with a did-you-mean).
        ConfigError: a layer without maps, channels outside the layer, ``size`` or ``steps``
            out of bounds, a batch too large for memory (refused before it is allocated).

    Example:
        >>> v = visualize(load_model("shapes"), layer="backbone.block4", channels=[0, 1],
        ...               size=64, steps=64)  # doctest: +SKIP
        >>> bool((v.activation > v.start).all())  # doctest: +SKIP
        True
    """
    began = time.perf_counter()
    m = as_model(model)
    size, steps, seed = check_render(size, steps, seed)
    name = m.one_layer(layer)
    chosen = _channel_list(channels, m.depth(name, size), name)
    _check_memory(m, name, len(chosen), size)
    notes = [ASSUMED_NOTE.format(m.preprocess.describe())] if m.assumed_preprocess else []
    if m.device.type == "cuda":
        notes.append(CUDA_NOTE)
    with inference_state(m.module, notes=notes), _deterministic(m.device):
        images, final, start = _optimise(m, name, chosen, size, steps, seed, progress)
    return Visualization(m.name, name, chosen, images.cpu().numpy().astype(np.float32),
                         final.cpu().numpy().astype(np.float64),
                         start.cpu().numpy().astype(np.float64), size, steps, seed,
                         time.perf_counter() - began, notes)


# ------------------------------------------------------------------------------ figure


def plot_visualizations(result: Visualization, *, columns: int | None = None) -> Figure:
    """The rendered images in a grid, each labelled with its channel and how hard it drives
    it (rendered mean activation, and the starting image's).

    Args:
        result: what :func:`visualize` returned.
        columns: images per row (default: up to 8).
    """
    from featuremap.plot.figure import literal_text, new_figure, wrap_title

    n = len(result.channels)
    cols = max(1, min(columns or 8, n))
    rows = -(-n // cols)
    fig = new_figure(1.9 * cols + 0.2, 2.15 * rows + 0.7)
    for i, (channel, act, start) in enumerate(zip(result.channels, result.activation,
                                                  result.start)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.clip(np.moveaxis(result.images[i], 0, -1), 0, 1), interpolation="lanczos")
        ax.set_title(f"channel {channel}\nmean {act:.3g} (start {start:.3g})", fontsize=8.5)
        ax.set_axis_off()
    fig.suptitle(wrap_title(f"{result.model_name} {result.layer}: images that maximise each "
                            f"channel's mean activation ({result.size} px, {result.steps} steps,"
                            f" seed {result.seed})", fig, 10), fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.75 / fig.get_figheight(),
                        wspace=0.08, hspace=0.35)
    return literal_text(fig)
