"""Image collections: find the images of a dataset, read them, and stream them in batches.

One door, :func:`open_collection`, turns a source into a :class:`Collection` of
:class:`Item` objects (a path, a label or None, a mask path or None, a display name). Kinds:

- ``"folder"``: every image file under a folder, at any depth.
- ``"classes"``: ``ROOT/<class>/<images...>``: classes are the sorted sub-folder names, labels
  ``0 .. K-1`` (as torchvision's ``ImageFolder``).
- ``"pairs"``: ``ROOT/images/NAME.*`` with ``ROOT/masks/NAME.png`` (label maps, same stem);
  ``ROOT/classes.txt`` names the classes, one per line, if present.
- ``"list"``: a text file (``.txt`` or ``.lst``) with one path per line, or ``PATH<TAB>LABEL``.
- ``"glob"``: a pattern such as ``"photos/**/*.jpg"`` (``**`` matches folders at any depth).

Files and folders whose names start with ``.`` are left out; items are sorted by their path
relative to the root, part by part, so the order is the same on every machine. Symbolic links
are followed (each folder once, so a link loop cannot recurse).

Reading follows one rule: a problem with one file (:class:`~featuremap.errors.ImageError`,
``OSError``: corrupt, truncated, empty, not an image, too large) skips that file, and the skip is
counted and named with its reason; a problem with the dataset
(:class:`~featuremap.errors.ConfigError`: a colour mask, a mask whose size differs from its
image's, labels beyond ``classes.txt``) or a bug stops the run and reaches the caller.
:func:`batches` decodes on a worker thread while the caller computes, at most ``prefetch``
batches ahead.

File names are data: every display name and message escapes control characters
(:func:`featuremap.errors.printable`), so a name cannot move the cursor, recolour a terminal
or forge a line.

Example:
    >>> collection = open_collection("shapes_data")  # doctest: +SKIP
    >>> print(collection)  # doctest: +SKIP
    140 images in 7 classes from 'shapes_data' (class folders)
    >>> with batches(collection, batch_size=32) as stream:  # doctest: +SKIP
    ...     for batch in stream:
    ...         for group in batch.groups:
    ...             group.images.shape  # (n, 3, H, W) float32 in [0, 1]
"""

from __future__ import annotations

from featuremap.datasets.collection import (
    IMAGE_SUFFIXES,
    KINDS,
    MASK_MODES,
    Collection,
    Item,
)
from featuremap.datasets.masks import Reader, read_mask
from featuremap.datasets.opening import open_collection
from featuremap.datasets.stream import Batch, BatchStream, Group, Skipped, batches
from featuremap.errors import printable

__all__ = [
    "IMAGE_SUFFIXES",
    "KINDS",
    "MASK_MODES",
    "Batch",
    "BatchStream",
    "Collection",
    "Group",
    "Item",
    "Reader",
    "Skipped",
    "batches",
    "open_collection",
    "printable",
    "read_mask",
]
