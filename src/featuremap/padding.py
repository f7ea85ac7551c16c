"""Where a map sees nothing but padding: the output rows and columns whose every kernel tap
falls in the padding, and the sentences that name them.

They appear when the padding is larger than ``dilation * (kernel - 1)``, or when the dilation is
larger than the input. The functions here work on one axis of settings already checked and
resolved; :func:`featuremap.arithmetic.padding_only` and
:func:`featuremap.arithmetic.padding_notes` are the doors that take the user's settings.
Standard library only.
"""

from __future__ import annotations

__all__ = ["AxisSettings", "describe_padding_only", "padding_only_axis"]

AxisSettings = tuple[int, int, int, tuple[int, int], int, tuple[int, ...]]
"""One axis: ``(input size, kernel size, dilation, (pad before, pad after), output size,
output positions that see only padding)``."""

# what the padding cells hold, per padding mode, for the notes
_FILL = {"zeros": "zeros", "reflect": "the image reflected at its border",
         "replicate": "copies of the border pixels",
         "circular": "the image wrapped around from the opposite side"}


def padding_only_axis(n: int, k: int, s: int, d: int, pads: tuple[int, int],
                      out: int) -> tuple[int, ...]:
    """The output positions along one axis whose every kernel tap falls in the padding.

    Args:
        n, k, s, d: input size, kernel size, stride and dilation along the axis.
        pads: ``(before, after)`` padding.
        out: the output size along the axis.

    Returns:
        The indices, ascending.

    Example:
        >>> padding_only_axis(4, 3, 1, 1, (3, 3), 8)
        (0, 7)
    """
    reach = d * (k - 1)
    if d <= n:  # taps closer than the input's size: only windows wholly before or after it
        before = max(0, -(-(pads[0] - reach) // s))  # y * s - pad + reach < 0
        after = max(0, out - ((n - 1 + pads[0]) // s + 1))  # y * s - pad > n - 1
        return tuple(range(min(before, out))) + tuple(range(out - after, out))
    blind = []
    for y in range(out):
        first = y * s - pads[0]  # input index of the first tap
        i = max(0, -(first // d))  # the first tap at or after index 0
        if i >= k or first + i * d > n - 1:
            blind.append(y)
    return tuple(blind)


def describe_padding_only(axes: tuple[AxisSettings, AxisSettings],
                          padding_mode: str) -> tuple[str, ...]:
    """Sentences naming the output rows and columns that see only padding; empty if none.

    Args:
        axes: the height's and the width's settings (see :data:`AxisSettings`), the last item
            from :func:`padding_only_axis`.
        padding_mode: one of :data:`featuremap.arithmetic.PADDING_MODES`: what the padding
            holds, as the notes say it.

    Returns:
        One sentence when rows and columns read alike, else one per axis that has any.
    """
    fill = _FILL[padding_mode]
    both = [_axis_note(*axis, ("row and column", "rows and columns"), fill, both=True)
            for axis in axes]
    if both[0] is not None and both[0] == both[1]:
        return (both[0],)
    notes = (_axis_note(*axes[0], ("row", "rows"), fill), _axis_note(*axes[1], ("column",
                                                                                  "columns"), fill))
    return tuple(n for n in notes if n is not None)


def _axis_note(n: int, k: int, d: int, pads: tuple[int, int], out: int, blind: tuple[int, ...],
               unit: tuple[str, str], fill: str, both: bool = False) -> str | None:
    if not blind:
        return None
    reach = d * (k - 1)
    if max(pads) > reach:
        pad = str(pads[0]) if pads[0] == pads[1] else f"{pads[0]}/{pads[1]}"
        cause = f"padding {pad} > dilation x (kernel - 1) = {reach}"
    else:
        cause = f"dilation {d} > input size {n} (the kernel taps step over the input)"
    first = next((i for i, y in enumerate(blind) if y != i), len(blind))
    last = next((i for i, y in enumerate(reversed(blind)) if y != out - 1 - i), len(blind))

    def count(c: int) -> str:
        return unit[0] if c == 1 else f"{c} {unit[1]}"

    single = len(blind) == 1 and not both
    if len(blind) == out:
        where = f"the only {unit[0]}" if out == 1 else f"all {out} {unit[1]}"
    elif first + last < len(blind):
        shown = ", ".join(map(str, blind[:8])) + (", ..." if len(blind) > 8 else "")
        where = f"{len(blind)} of the {out} {unit[1]} ({shown})"
    elif first == last:
        where = f"the outer {count(first)} on each side"
    elif first and last:
        where = f"the first {count(first)} and the last {count(last)}"
    else:
        where = f"the first {count(first)}" if first else f"the last {count(last)}"
    verb = "sees" if single else "see"
    return f"{cause}: in each map, {where} {verb} only padding ({fill})."

