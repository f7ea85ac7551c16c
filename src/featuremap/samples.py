"""The sample photos: the images scikit-image ships in ``skimage/data``, by name.

``load_image("sample:NAME")`` loads one (:mod:`featuremap.images`); :func:`list_samples` names
those present on disk. They are located without importing scikit-image (which is slow to
import), and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from featuremap.errors import ImageError, unknown_name

__all__ = ["SAMPLE_PREFIX", "list_samples", "sample_path"]

SAMPLE_PREFIX = "sample:"
_SAMPLES_HINT = "Run 'featuremap samples' to list them."

# name -> (file in skimage/data, one-line description)
_SAMPLES: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut.png", "Astronaut Eileen Collins, colour, 512x512"),
    "brick": ("brick.png", "Brick wall texture, gray, 512x512"),
    "camera": ("camera.png", "Cameraman, gray, 512x512"),
    "cell": ("cell.png", "Cell under a microscope, gray, 660x550"),
    "chelsea": ("chelsea.png", "Chelsea the cat, colour, 300x451"),
    "chessboard": ("chessboard_GRAY.png", "Chessboard, gray, 200x200"),
    "clock_motion": ("clock_motion.png", "Clock blurred by motion, gray, 300x400"),
    "coffee": ("coffee.png", "A cup of coffee, colour, 400x600"),
    "coins": ("coins.png", "Greek coins on a plain background, gray, 303x384"),
    "color": ("color.png", "Colour wheel test chart, colour, 370x371"),
    "grass": ("grass.png", "Grass texture, gray, 512x512"),
    "gravel": ("gravel.png", "Gravel texture, gray, 512x512"),
    "horse": ("horse.png", "Silhouette of a horse, black on white, 328x400"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "Hubble eXtreme Deep Field, colour, 872x1000"),
    "ihc": ("ihc.png", "Immunohistochemistry stain of tissue, colour, 512x512"),
    "logo": ("logo.png", "scikit-image logo on white, colour, 500x500"),
    "microaneurysms": ("microaneurysms.png", "Retina detail with microaneurysms, gray, 102x102"),
    "moon": ("moon.png", "Surface of the moon, gray, 512x512"),
    "motorcycle_left": ("motorcycle_left.png", "Motorcycle, left view of a stereo pair, 500x741"),
    "page": ("page.png", "Scanned page of text, unevenly lit, gray, 191x384"),
    "phantom": ("phantom.png", "Shepp-Logan phantom (tomography test), 400x400"),
    "retina": ("retina.jpg", "Fundus photograph of a human retina, colour, 1411x1411"),
    "rocket": ("rocket.jpg", "Rocket launch, colour, 427x640"),
    "text": ("text.png", "Printed text on a shaded background, gray, 172x448"),
}


@lru_cache(maxsize=1)
def _skimage_data_dir() -> Path | None:
    """Return scikit-image's data folder without importing scikit-image, or None."""
    try:
        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def _available_samples() -> dict[str, tuple[Path, str]]:
    """Return ``{name: (path, description)}`` for the sample files present on disk."""
    folder = _skimage_data_dir()
    if folder is None:
        return {}
    found = {name: (folder / filename, text) for name, (filename, text) in _SAMPLES.items()}
    return {name: entry for name, entry in sorted(found.items()) if entry[0].is_file()}


def list_samples() -> dict[str, str]:
    """Return the bundled sample images that exist on disk.

    Returns:
        A dict ``{name: one-line description}`` (sizes as height x width), sorted by name. Load
        one with ``load_image("sample:NAME")``.

    Example:
        >>> "astronaut" in list_samples()
        True
    """
    return {name: text for name, (_, text) in _available_samples().items()}


def sample_path(name: str) -> Path:
    """Return the path of the sample image ``name`` (a ``"sample:"`` prefix is allowed).

    Args:
        name: a name from :func:`list_samples`, case-insensitive.

    Returns:
        The path of the image file.

    Raises:
        UnknownNameError: ``name`` is not an available sample (with did-you-mean suggestions).
        ImageError: ``name`` is not a string.

    Example:
        >>> sample_path("camera").name
        'camera.png'
    """
    if not isinstance(name, str):
        raise ImageError(f"A sample name must be a string, got {type(name).__name__}.")
    key = name[len(SAMPLE_PREFIX):] if name.startswith(SAMPLE_PREFIX) else name
    available = _available_samples()
    entry = available.get(key.strip().lower())
    if entry is None:
        raise unknown_name("sample", key, available, hint=_SAMPLES_HINT)
    return entry[0]
