"""The map pool: memory handed out is never reachable from a live tensor or array."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch
from torch import nn

from featuremap import buffers
from featuremap.buffers import MapPool
from featuremap.errors import ConfigError
from featuremap.extraction import Extractor, extract

SHAPE = (4, 16, 32, 32)  # 256 KiB of float32: pooled
NBYTES = 4 * 16 * 32 * 32 * 4


def span(t: torch.Tensor) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def pointer(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True)).eval()


@pytest.fixture
def empty_pool():
    """The extraction pool, emptied before and after the test."""
    buffers.release()
    yield buffers.pool
    gc.collect()
    buffers.release()


def test_take_is_like_empty():
    p = MapPool(min_bytes=1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8,
                  torch.bool, torch.complex64, torch.complex128):
        t = p.take(SHAPE, dtype)
        assert t.shape == SHAPE and t.dtype == dtype and t.is_contiguous()
        assert t.device.type == "cpu" and p.lent_bytes == t.numel() * t.element_size()
        t.fill_(1)
        assert bool((t == 1).all())
        del t
    assert p.take((), torch.float64).shape == ()


def test_small_and_unpooled_requests_fall_through():
    p = MapPool()
    small = p.take((10,))
    assert small.shape == (10,) and p.lent_bytes == 0
    off = MapPool(limit=0)
    t = off.take(SHAPE)
    del t
    assert off.lent_bytes == 0 and off.idle_bytes == 0
    over = MapPool(limit=NBYTES // 2, min_bytes=1)  # larger than the limit: never pooled
    t = over.take(SHAPE)
    assert over.lent_bytes == 0
    del t
    assert over.idle_bytes == 0


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="limit"):
        MapPool(limit=-1)
    with pytest.raises(ConfigError, match="min_bytes"):
        MapPool(min_bytes=-1)
    with pytest.raises(ConfigError, match="limit"):
        MapPool().limit = -5


def test_dropped_memory_is_reused():
    p = MapPool()
    a = p.take(SHAPE)
    ptr = pointer(a)
    assert p.lent_bytes == NBYTES and p.idle_bytes == 0
    del a
    assert p.lent_bytes == 0 and p.idle_bytes == NBYTES
    b = p.take(SHAPE)
    assert pointer(b) == ptr and p.idle_bytes == 0


KEEPERS = {  # what a user may keep of a map after dropping the map itself
    "view": lambda t: t.view(-1),
    "slice": lambda t: t[1:2, 3],
    "numpy": lambda t: t.numpy(),
    "numpy view": lambda t: t.numpy()[2, 5:],
    "storage": lambda t: t.untyped_storage(),
    "dlpack": lambda t: torch.utils.dlpack.to_dlpack(t),
    "reshape": lambda t: t.reshape(4, -1),
    "from_numpy": lambda t: torch.from_numpy(t.numpy()),
}


@pytest.mark.parametrize("keep", list(KEEPERS))
def test_memory_still_referenced_is_never_handed_out(keep):
    p = MapPool()
    a = p.take(SHAPE)
    a.fill_(7)
    kept = KEEPERS[keep](a)
    start, end = span(a)
    del a
    gc.collect()
    assert p.idle_bytes == 0
    others = [p.take(SHAPE) for _ in range(3)]
    for o in others:
        o.fill_(-1)
        o0, o1 = span(o)
        assert o1 <= start or end <= o0
    if keep == "dlpack":
        kept = torch.utils.dlpack.from_dlpack(kept)
    values = kept if isinstance(kept, (torch.Tensor, np.ndarray)) else None
    if values is not None:
        assert (np.asarray(values) == 7).all()
    del kept, values
    gc.collect()
    assert p.idle_bytes == NBYTES


def test_limit_bounds_idle_memory_oldest_first():
    p = MapPool(limit=3 * NBYTES)
    held = [p.take(SHAPE) for _ in range(5)]
    pointers = [pointer(t) for t in held]
    for i in range(5):  # dropped in this order
        held[i] = None
        assert p.idle_bytes == min(i + 1, 3) * NBYTES
    assert p.lent_bytes == 0
    again = [p.take(SHAPE) for _ in range(3)]
    assert {pointer(t) for t in again} == set(pointers[2:])  # the first two were unmapped


def test_lowering_the_limit_unmaps_idle_blocks_at_once():
    p = MapPool(limit=4 * NBYTES)
    held = [p.take(SHAPE) for _ in range(4)]
    del held
    assert p.idle_bytes == 4 * NBYTES
    p.limit = NBYTES
    assert p.idle_bytes == NBYTES
    p.limit = 0
    assert p.idle_bytes == 0
    t = p.take(SHAPE)  # off: plain torch.empty
    assert p.lent_bytes == 0 and t.shape == SHAPE


def test_sizes_are_matched_within_a_quarter():
    p = MapPool(min_bytes=1)
    block = p.take((NBYTES // 4,))
    ptr = pointer(block)
    del block
    half = p.take((NBYTES // 8,))  # half of the block: not handed out
    assert pointer(half) != ptr
    near = p.take((NBYTES * 9 // 40,))  # 90% of it
    assert pointer(near) == ptr


def test_release_frees_idle_and_forgets_lent():
    p = MapPool()
    a, b = p.take(SHAPE), p.take(SHAPE)
    a.fill_(3)
    del b
    assert p.release() == NBYTES
    assert p.idle_bytes == 0 and p.lent_bytes == 0
    assert bool((a == 3).all())  # still valid
    del a
    assert p.idle_bytes == 0  # not taken back after release


def test_shared_memory_gives_the_block_back_at_once():
    p = MapPool()
    a = p.take(SHAPE)
    a.fill_(5)
    a.share_memory_()
    assert a.is_shared() and bool((a == 5).all())
    assert p.idle_bytes == NBYTES  # torch moved the data out
    b = p.take(SHAPE)
    b.fill_(0)
    assert not overlaps(a, b) and bool((a == 5).all())


def test_other_devices_fall_through():
    p = MapPool()
    t = p.take(SHAPE, device="meta")
    assert t.device.type == "meta" and t.shape == SHAPE and p.lent_bytes == 0
    if torch.cuda.is_available():
        c = p.take(SHAPE, device="cuda")
        assert c.is_cuda and p.lent_bytes == 0


def test_threads_never_share_memory():
    p = MapPool(limit=8 * NBYTES)
    errors: list[str] = []

    def work(k: int) -> None:
        mine = []
        for i in range(60):
            t = p.take(SHAPE)
            t.fill_(k)
            mine.append(t)
            if len(mine) > 2:
                old = mine.pop(0)
                if not bool((old == k).all()):
                    errors.append(f"thread {k} round {i}: values changed")
        for t in mine:
            if not bool((t == k).all()):
                errors.append(f"thread {k}: values changed at the end")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert p.lent_bytes == 0 and p.idle_bytes <= 8 * NBYTES


# ------------------------------------------------------------------ extraction draws from it


def test_default_extraction_copies_come_from_the_pool_and_match_a_forward(empty_pool):
    model = net()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model[0](x).clone()
    fm = extract(model, x, layers="0")
    assert torch.equal(fm["0"], want)  # the in-place ReLU did not reach the copy
    assert empty_pool.lent_bytes >= want.numel() * 4
    ptr = pointer(fm["0"])
    del fm
    assert empty_pool.idle_bytes >= want.numel() * 4
    again = Extractor(model, "0")(x)  # the freed block is lent again
    assert pointer(again["0"]) == ptr and torch.equal(again["0"], want)
    del again
    assert buffers.release() >= want.numel() * 4
    assert empty_pool.idle_bytes == 0


def test_maps_of_consecutive_calls_never_alias(empty_pool):
    model = net()
    layers = ["0", "2"]
    results = [extract(model, torch.randn(2, 3, 64, 64), layers=layers) for _ in range(4)]
    one = Extractor(model, layers)
    results += [one(torch.randn(2, 3, 64, 64)) for _ in range(3)]
    tensors = [fm[n] for fm in results for n in layers]
    for i, a in enumerate(tensors):
        for b in tensors[i + 1:]:
            assert not overlaps(a, b)


def test_kept_maps_survive_later_calls_unchanged(empty_pool):
    model = net()
    layers = ["0", "2"]
    x1 = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want0, want2 = model[0](x1).clone(), model[:3](x1).clone()
    fm1 = extract(model, x1, layers=layers)
    view = fm1["0"][1]  # a view, an array and the whole result are kept
    array = fm1["2"].numpy()
    whole = extract(model, x1, layers=layers)
    del fm1  # only the view and the array of the first result remain
    for _ in range(5):
        fm = extract(model, torch.randn(2, 3, 64, 64), layers=layers)
        assert not overlaps(fm["0"], view) and not overlaps(fm["2"], whole["2"])
        fm["0"].fill_(-3)  # a user writing into a new result touches nothing kept
        del fm
    assert torch.equal(view, want0[1])
    assert np.array_equal(array, want2.numpy())
    assert torch.equal(whole["0"], want0) and torch.equal(whole["2"], want2)


def test_freed_maps_are_reused_by_the_next_call(empty_pool):
    model = net()
    x = torch.randn(2, 3, 64, 64)
    fm = extract(model, x, layers=["0", "2"])
    pointers = {pointer(fm[n]) for n in fm}
    lent = empty_pool.lent_bytes
    del fm
    fm = extract(model, x, layers=["0", "2"])
    assert {pointer(fm[n]) for n in fm} == pointers
    assert empty_pool.lent_bytes == lent  # nothing new was mapped


def test_the_pool_cap_holds_for_extraction(empty_pool):
    model = net()
    x = torch.randn(2, 3, 64, 64)
    per_call = 2 * 16 * 64 * 64 * 4 + 2 * 32 * 64 * 64 * 4
    old = empty_pool.limit
    try:
        empty_pool.limit = per_call
        kept = [extract(model, x, layers=["0", "2"]) for _ in range(4)]
        assert empty_pool.lent_bytes >= 4 * per_call  # held maps are the user's, not capped
        del kept
        assert empty_pool.idle_bytes <= per_call  # what comes back is capped
        empty_pool.limit = 0
        assert empty_pool.idle_bytes == 0
        fm = extract(model, x, layers="2")  # the pool off: fresh memory, same values
        with torch.no_grad():
            assert torch.equal(fm["2"], model[:3](x))
    finally:
        empty_pool.limit = old


def test_reused_buffers_stay_outside_the_pool(empty_pool):
    model = net()
    ex = Extractor(model, ["0", "2"], reuse_buffers=True)
    first = ex(torch.randn(2, 3, 64, 64))
    second = ex(torch.randn(2, 3, 64, 64))
    assert pointer(first["2"]) == pointer(second["2"])  # overwritten by design
    assert empty_pool.lent_bytes == 0


def test_lent_blocks_are_capped_and_refused_mappings_fall_through(monkeypatch):
    p = MapPool(max_lent=2)
    held = [p.take(SHAPE) for _ in range(3)]
    assert p.lent_bytes == 2 * NBYTES  # the third is torch.empty: one mapping fewer
    assert all(t.shape == SHAPE for t in held)
    del held

    def refuse(nbytes):
        raise OSError(12, "Cannot allocate memory")

    q = MapPool()
    monkeypatch.setattr(q, "_map", refuse)
    t = q.take(SHAPE)
    assert t.shape == SHAPE and q.lent_bytes == 0
    with pytest.raises(ConfigError, match="max_lent"):
        MapPool(max_lent=-1)
