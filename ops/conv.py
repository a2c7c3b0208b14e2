"""Convolution and pooling of any rank, channels-first or channels-last."""

from __future__ import annotations

from functools import lru_cache

from tensorcomp.opdef import Op

from ._util import affine, join, names, per_axis


def conv_source(rank: int, stride=1, dilation=1, groups: int = 1, channels_last: bool = False,
                group_in: int | None = None, group_out: int | None = None) -> str:
    """Index-expression source of a ``rank``-D convolution.

    Channels-first: ``O[n, f, y...] += I[n, c, s*y + d*k...] * W[f, c, k...]``
    (PyTorch's layouts). Channels-last: ``O[n, y..., f] += I[n, s*y + d*k..., c]
    * W[k..., c, f]``. With groups, W holds ``C/groups`` input channels and
    output channel f reads input channels ``(f // (F/groups)) * (C/groups) + c``.
    """
    s = per_axis(stride, rank, "stride")
    d = per_axis(dilation, rank, "dilation")
    ys, ks = names("y", rank), names("k", rank)
    taps = [affine(si, y, di, k) for si, y, di, k in zip(s, ys, d, ks)]
    if groups == 1:
        chan = "c"
    else:
        chan = f"(f // {group_out}) * {group_in} + c"
    if channels_last:
        return f"O[n, {join(ys)}, f] += I[n, {join(taps)}, {chan}] * W[{join(ks)}, c, f]"
    return f"O[n, f, {join(ys)}] += I[n, {chan}, {join(taps)}] * W[f, c, {join(ks)}]"


@lru_cache(maxsize=None)
def conv(rank: int, stride=1, dilation=1, padding=0, groups: int = 1, channels_last: bool = False,
         in_channels: int | None = None, out_channels: int | None = None) -> Op:
    """A ``rank``-D convolution op taking (I, W).

    ``padding`` zero-pads the spatial axes of I (an int or one per axis).
    ``groups > 1`` needs ``in_channels`` and ``out_channels`` (totals).
    """
    if groups != 1:
        if not in_channels or not out_channels or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} needs in_channels and out_channels divisible by it, got "
                             f"{in_channels} and {out_channels}")
        gi, go = in_channels // groups, out_channels // groups
    else:
        gi = go = None
    stride, dilation = per_axis(stride, rank, "stride"), per_axis(dilation, rank, "dilation")
    src = conv_source(rank, stride, dilation, groups, channels_last, gi, go)
    p = per_axis(padding, rank, "padding")
    pad = None
    if any(p):
        spatial = tuple((n, n) for n in p)
        pad = {"I": ((0, 0), *spatial, (0, 0)) if channels_last else ((0, 0), (0, 0), *spatial)}
    return Op(src, pad=pad)


@lru_cache(maxsize=None)
def pool(kind: str, rank: int, window, stride=None, padding=0, channels_last: bool = False) -> Op:
    """Max or average pooling of any rank over (N, C, spatial...) or (N, spatial..., C) input X.

    Average pooling divides by the full window (padding counts, as
    PyTorch's default ``count_include_pad=True``); max pooling pads with -inf.
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"unknown pooling '{kind}'; use 'max' or 'avg'")
    w = per_axis(window, rank, "window")
    s = per_axis(stride if stride is not None else window, rank, "stride")
    p = per_axis(padding, rank, "padding")
    ys, ks = names("y", rank), names("k", rank)
    taps = [affine(si, y, 1, k) for si, y, k in zip(s, ys, ks)]
    out_idx = [*ys, "c"] if channels_last else ["c", *ys]
    in_idx = [*taps, "c"] if channels_last else ["c", *taps]
    ranges = {k: n for k, n in zip(ks, w)}
    if kind == "max":
        src = f"O[n, {join(out_idx)}] = max(X[n, {join(in_idx)}])"
    else:
        count = 1
        for n in w:
            count *= n
        src = f"O[n, {join(out_idx)}] += X[n, {join(in_idx)}] / {count}"
    pad = pad_value = None
    if any(p):
        spatial = tuple((n, n) for n in p)
        pad = {"X": ((0, 0), *spatial, (0, 0)) if channels_last else ((0, 0), (0, 0), *spatial)}
        pad_value = {"X": float("-inf")} if kind == "max" else None
    return Op(src, ranges=ranges, pad=pad, pad_value=pad_value)
