"""Memory for captured feature maps: taken back when torch frees the maps, lent to the next copy.

Why it exists: on the CPU, copying every Conv2d output of resnet50 (batch 8, 224x224: 356 MB)
into fresh memory is paid mostly in page faults, not in the copy: with glibc's defaults each
large copy is a new ``mmap`` that the kernel maps and zeroes page by page, on every call (see the
bench_extract section of ``benchmarks/README.md``). :class:`MapPool` keeps the memory of maps
that nothing references any more and lends it to the next extraction, so repeated extractions
stop faulting, without the user opting in and without ever handing out memory of maps the user
still holds (which ``Extractor(reuse_buffers=True)`` does, by design).

How it knows that memory is free: a block is lent as a tensor made by ``torch.from_numpy`` on a
NumPy view of the block, and the pool keeps only a weak reference to that view. The tensor's
storage holds the only strong one, so the block comes back (a weakref callback) exactly when
torch frees the storage: when no tensor, view, slice, ``.numpy()`` array, DLPack capsule or
``untyped_storage()`` object refers to it any more. Nothing is counted by hand and no private
torch API is used. A block that torch moves to shared memory (``share_memory_()``, or sending
the tensor through ``torch.multiprocessing``) comes back at once, because torch no longer uses
it.

What it keeps: blocks that came back, up to ``limit`` bytes of them (:data:`DEFAULT_LIMIT`,
1 GiB; the least recently returned are unmapped first). Memory still lent is the user's and is
not counted: it is freed, or comes back, when the user drops the maps. :func:`release` unmaps
everything idle at once; ``pool.limit = 0`` turns the pool off. The pool maps its own memory
(anonymous ``mmap``) and leaves the process's allocator as it is. CPU only: other devices get
``torch.empty`` (CUDA's caching allocator already reuses memory), as do requests smaller than
``min_bytes`` (glibc serves those from its heap without faulting), requests while ``max_lent``
blocks are out (each block is one mapping, and a process has a limited number of them:
``vm.max_map_count``, 65,530 by default) and requests the system refuses to map.

Lent tensors behave like any other, except that their storage cannot grow: ``resize_`` to more
elements than were taken raises (shrinking, views and in-place ops work).
"""

from __future__ import annotations

import bisect
import collections
import math
import mmap
import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from featuremap.errors import ConfigError

__all__ = ["DEFAULT_LIMIT", "MapPool", "pool", "release", "take"]

DEFAULT_LIMIT = 2**30
"""Idle bytes the extraction pool keeps at most (1 GiB: resnet50's 53 Conv2d maps of a batch
of 8 at 224x224 are 356 MB, twice that when the previous result is held during a call)."""

_PAGE = mmap.PAGESIZE
_POOLS: weakref.WeakSet[MapPool] = weakref.WeakSet()


class _Block:
    """One anonymous memory mapping, owned by the pool while idle."""

    __slots__ = ("array", "nbytes")

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.nbytes = array.nbytes


def _mapped(nbytes: int) -> np.ndarray:
    """Fresh page-aligned memory as a uint8 array, unmapped when the last view of it dies."""
    if hasattr(mmap, "MAP_ANONYMOUS"):
        return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS),
                             dtype=np.uint8)
    return np.empty(nbytes, dtype=np.uint8)  # pragma: no cover - not POSIX


class MapPool:
    """Memory for tensors that no live tensor or array shares, kept across extractions.

    Args:
        limit: the most bytes kept idle (not lent); 0 turns the pool off (``take`` is then
            ``torch.empty``).
        min_bytes: smaller requests get ``torch.empty``.
        max_lent: the most blocks lent at once; further requests get ``torch.empty``.

    Thread-safe: ``take`` may be called from several threads, and blocks come back from
    whichever thread frees their tensor.

    Raises:
        ConfigError: a negative ``limit``, ``min_bytes`` or ``max_lent``.

    Example:
        >>> p = MapPool(limit=2**28)
        >>> t = p.take((8, 64, 56, 56))      # like torch.empty, memory the pool owns
        >>> del t                            # the block is idle again, for the next take
        >>> p.idle_bytes > 0
        True
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, *, min_bytes: int = 2**18,
                 max_lent: int = 4096) -> None:
        for name, value in (("min_bytes", min_bytes), ("max_lent", max_lent)):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}.")
        self._lock = threading.Lock()
        self._lent: dict[int, tuple[weakref.ref, _Block]] = {}  # by id of the weak reference
        self._returned: collections.deque[_Block] = collections.deque()
        self._idle: dict[int, _Block] = {}  # in return order: the first is evicted first
        self._by_size: dict[int, list[int]] = {}
        self._sizes: list[int] = []  # sorted keys of _by_size
        self._idle_bytes = 0
        self._serial = 0
        self._limit = 0
        self.limit = limit
        self.min_bytes = min_bytes
        self.max_lent = max_lent
        _POOLS.add(self)

    @property
    def limit(self) -> int:
        """The most idle bytes kept; lowering it unmaps the oldest idle blocks at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 0:
            raise ConfigError(f"the pool's limit must be >= 0 bytes, got {value}.")
        with self._lock:
            self._limit = int(value)
            self._drain()
            while self._idle_bytes > self._limit:
                self._remove(next(iter(self._idle)))

    @property
    def idle_bytes(self) -> int:
        """Bytes held and not lent (those that came back so far)."""
        with self._lock:
            self._drain()
            return self._idle_bytes

    @property
    def lent_bytes(self) -> int:
        """Bytes of blocks lent and not yet come back."""
        return sum(block.nbytes for _, block in list(self._lent.values()))

    def take(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
        """An uninitialised contiguous tensor whose memory nothing else references.

        Args:
            shape: the tensor's shape.
            dtype: its dtype.
            device: where; only the CPU is pooled (default: the CPU).

        Returns:
            A tensor like ``torch.empty(shape, dtype=dtype, device=device)``.
        """
        dev = torch.device(device if device is not None else "cpu")
        shape = tuple(int(s) for s in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if (dev.type != "cpu" or nbytes < max(self.min_bytes, 1) or nbytes > self._limit
                or len(self._lent) >= self.max_lent):
            return torch.empty(shape, dtype=dtype, device=dev)
        try:
            return self._lend(nbytes).view(dtype).view(shape)
        except OSError:  # the system would not map more memory: torch's allocator may
            return torch.empty(shape, dtype=dtype, device=dev)
        except (RuntimeError, TypeError):  # a dtype a byte buffer cannot be viewed as (the
            return torch.empty(shape, dtype=dtype, device=dev)  # block came back already)

    def release(self) -> int:
        """Unmap every idle block and stop taking back the lent ones.

        Lent blocks stay valid: they are unmapped when their tensors die.

        Returns:
            The idle bytes freed.
        """
        with self._lock:
            self._drain()
            freed = self._idle_bytes
            self._lent.clear()
            self._returned.clear()
            self._idle.clear()
            self._by_size.clear()
            self._sizes.clear()
            self._idle_bytes = 0
            return freed

    def _lend(self, nbytes: int) -> torch.Tensor:
        size = -(-nbytes // _PAGE) * _PAGE
        with self._lock:
            self._drain()
            block = self._reuse(size)
        if block is None:
            block = _Block(self._map(size))
        view = block.array[:nbytes]
        # Only the tensor's storage keeps `view` alive: the callback fires when torch frees it.
        ref = weakref.ref(view, self._back)
        self._lent[id(ref)] = (ref, block)
        return torch.from_numpy(view)

    def _map(self, nbytes: int) -> np.ndarray:
        """New memory for a block (page-aligned, unmapped when its last view dies)."""
        return _mapped(nbytes)

    def _back(self, ref: weakref.ref) -> None:
        entry = self._lent.pop(id(ref), None)
        if entry is None:  # released meanwhile: the block dies with its last view
            return
        self._returned.append(entry[1])
        # Called wherever torch freed the storage, possibly inside take() on this very thread
        # (a garbage collection): never wait for the lock here.
        if self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()

    def _drain(self) -> None:
        """File the blocks that came back (lock held), evicting beyond the limit."""
        while self._returned:
            block = self._returned.popleft()
            if block.nbytes > self._limit:
                continue
            while self._idle_bytes + block.nbytes > self._limit:
                self._remove(next(iter(self._idle)))
            self._serial += 1
            self._idle[self._serial] = block
            keys = self._by_size.get(block.nbytes)
            if keys is None:
                keys = self._by_size[block.nbytes] = []
                bisect.insort(self._sizes, block.nbytes)
            keys.append(self._serial)
            self._idle_bytes += block.nbytes

    def _reuse(self, size: int) -> _Block | None:
        """The smallest idle block of ``size`` to ``size * 1.25`` bytes (lock held)."""
        i = bisect.bisect_left(self._sizes, size)
        if i == len(self._sizes) or self._sizes[i] > size + size // 4:
            return None
        return self._remove(self._by_size[self._sizes[i]][-1])

    def _remove(self, key: int) -> _Block:
        block = self._idle.pop(key)
        keys = self._by_size[block.nbytes]
        keys.remove(key)
        if not keys:
            del self._by_size[block.nbytes]
            self._sizes.remove(block.nbytes)
        self._idle_bytes -= block.nbytes
        return block

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for each in list(_POOLS):
        each._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


pool = MapPool()
"""The pool that :func:`featuremap.extract` and :class:`featuremap.Extractor` copy maps into."""


def take(shape: Sequence[int], dtype: torch.dtype = torch.float32,
         device: torch.device | str | None = None) -> torch.Tensor:
    """``pool.take``: an uninitialised tensor whose memory nothing else references.

    Args:
        shape: the tensor's shape.
        dtype: its dtype.
        device: where; only the CPU is pooled.

    Returns:
        A tensor like ``torch.empty(shape, dtype=dtype, device=device)``.
    """
    return pool.take(shape, dtype, device)


def release() -> int:
    """Unmap the memory the extraction pool keeps idle.

    Returns:
        The bytes freed.
    """
    return pool.release()
