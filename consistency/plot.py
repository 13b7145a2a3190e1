"""The loss curve as a PNG, drawn with Pillow (no plotting library needed): ticks, labels, a smoothed curve, and the
curriculum's stage changes marked."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centered moving average over `window` points (shrinking at the ends): the trend through per-step noise."""
    if window <= 1:
        return list(values)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    half, n = window // 2, len(values)
    return [(prefix[min(n, i + half + 1)] - prefix[max(0, i - half)]) / (min(n, i + half + 1) - max(0, i - half))
            for i in range(n)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # a scalable font on Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def plot_loss(steps: Sequence[int], losses: Sequence[float], path: str | os.PathLike, *, title: str = "training loss",
              stages: Sequence[tuple[int, str]] = (), ylabel: str = "loss") -> None:
    """Loss against step: the raw per-step values in a light colour, a moving average on top, a log y axis when the
    loss spans more than a decade, and a dashed line with a label at each (step, label) in `stages`."""
    width, height = 900, 520
    left, right, top, bottom = 90, 30, 50, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    draw.text((width // 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text((left + (width - left - right) // 2, height - 18), "training step", fill="black", font=font, anchor="ms")
    pairs = [(s, v) for s, v in zip(steps, losses) if math.isfinite(v)]
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if len(pairs) < 2:
        draw.text(((x0 + x1) // 2, (y0 + y1) // 2), "not enough steps logged yet", fill="gray", font=font, anchor="mm")
        _save(img, path)
        return
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    trend = smooth(ys, max(1, len(ys) // 50))
    log = min(ys) > 0 and max(ys) / min(ys) > 10
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = f(min(ys)), f(max(ys))
    pad = 0.03 * ((hi - lo) or 1.0)
    lo, hi = lo - pad, hi + pad
    smin, smax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    px = lambda s: x0 + (s - smin) / (smax - smin) * (x1 - x0)  # noqa: E731
    py = lambda v: y1 - (f(v) - lo) / (hi - lo) * (y1 - y0)  # noqa: E731

    # y ticks: decades (and 2x, 5x when few) on a log axis, round numbers on a linear one
    if log:
        ticks = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in ((1, 2, 5) if hi - lo < 3 else (1,))]
    else:
        ticks = nice_ticks(lo, hi)
    for v in ticks:
        if not lo <= f(v) <= hi:
            continue
        y = py(v)
        draw.line([(x0, y), (x1, y)], fill=(235, 235, 235))
        draw.line([(x0 - 5, y), (x0, y)], fill="black")
        draw.text((x0 - 8, y), _label(v), fill="black", font=small, anchor="rm")
    for s in nice_ticks(smin, smax):
        if smin <= s <= smax:
            x = px(s)
            draw.line([(x, y1), (x, y1 + 5)], fill="black")
            draw.text((x, y1 + 8), _label(s), fill="black", font=small, anchor="mt")
    axis = f"{ylabel} (log scale)" if log else ylabel
    label = Image.new("RGBA", (y1 - y0, 24), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(((y1 - y0) // 2, 12), axis, fill="black", font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (8, y0), label.rotate(90, expand=True))

    for step, text in stages:
        if smin < step <= smax:
            x = px(step)
            for ya in range(y0, y1, 8):
                draw.line([(x, ya), (x, min(ya + 4, y1))], fill=(150, 150, 150))
            draw.text((x + 3, y0 + 3), text, fill=(110, 110, 110), font=small)
    draw.line([(px(s), py(v)) for s, v in zip(xs, ys)], fill=(174, 199, 232), width=1)
    draw.line([(px(s), py(v)) for s, v in zip(xs, trend) if v > 0 or not log], fill=(31, 119, 180), width=3)
    draw.text((x1 - 8, y0 + 8), "per step", fill=(150, 175, 215), font=small, anchor="ra")
    draw.text((x1 - 8, y0 + 24), "moving average", fill=(31, 119, 180), font=small, anchor="ra")
    _save(img, path)


def _save(img: Image.Image, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def plot_bars(rows: Sequence[tuple[str, Sequence[float]]], path: str | os.PathLike, *, series: Sequence[str],
              title: str, xlabel: str, log: bool = True) -> None:
    """Horizontal grouped bars: one group per (label, values) row, one bar per series (values aligned with `series`;
    NaN leaves a gap), on a log x axis by default (lower is better for an FID, and the values span decades)."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    bar, gap, left, right, top = 14, 12, 330, 40, 60
    height = top + len(rows) * (bar * len(series) + gap) + 60
    width = 900
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    draw.text((width // 2, 12), title, fill="black", font=font, anchor="mt")
    values = [v for _, vs in rows for v in vs if math.isfinite(v) and (v > 0 or not log)]
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = (math.floor(f(min(values))), f(max(values)) + 0.12) if log else (0.0, max(values) * 1.05)
    x0, x1, y1 = left, width - right, height - 45
    px = lambda v: x0 + (f(v) - lo) / ((hi - lo) or 1.0) * (x1 - x0)  # noqa: E731
    ticks = [m * 10.0**e for e in range(int(lo), math.ceil(hi) + 1) for m in (1, 2, 5)] if log else nice_ticks(lo, hi)
    for v in ticks:
        if lo <= f(v) <= hi:
            draw.line([(px(v), top - 5), (px(v), y1)], fill=(225, 225, 225))
            draw.text((px(v), y1 + 5), _label(v), fill="black", font=small, anchor="mt")
    draw.text(((x0 + x1) // 2, height - 12), xlabel + (" (log scale)" if log else ""), fill="black", font=font,
              anchor="ms")
    for k, name in enumerate(series):
        draw.rectangle([x0 + 160 * k, 34, x0 + 160 * k + 12, 46], fill=colors[k % len(colors)])
        draw.text((x0 + 160 * k + 18, 40), name, fill="black", font=small, anchor="lm")
    y = top
    for label, vs in rows:
        draw.text((x0 - 8, y + bar * len(series) / 2), label, fill="black", font=small, anchor="rm")
        for k, v in enumerate(vs):
            if math.isfinite(v):
                draw.rectangle([x0, y + k * bar, px(v), y + (k + 1) * bar - 2], fill=colors[k % len(colors)])
                draw.text((px(v) + 4, y + k * bar + bar / 2 - 1), _label(v), fill="black", font=small, anchor="lm")
        y += bar * len(series) + gap
    draw.line([(x0, top - 5), (x0, y1)], fill="black")
    _save(img, path)


def plot_panels(panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
                path: str | os.PathLike, *, title: str, xlabel: str) -> None:
    """Small line plots side by side, one per (panel title, {series name: (xs, ys)}), the series in the same colours
    in every panel, a legend below: e.g. FID, precision, recall and label agreement against the guidance scale."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (227, 119, 194), (127, 127, 127)]
    names = list(dict.fromkeys(name for _, series in panels for name in series))
    pw, ph, left, top, gap = 300, 240, 55, 50, 25
    width = left + len(panels) * (pw + gap)
    height = top + ph + 60 + 18 * len(names)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    draw.text((width // 2, 12), title, fill="black", font=font, anchor="mt")
    for p, (name, series) in enumerate(panels):
        x0, y0 = left + p * (pw + gap), top
        x1, y1 = x0 + pw, y0 + ph
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text(((x0 + x1) // 2, y0 - 6), name, fill="black", font=small, anchor="ms")
        xs = [x for xv, _ in series.values() for x in xv]
        ys = [y for _, yv in series.values() for y in yv if math.isfinite(y)]
        if not xs or not ys:
            continue
        xlo, xhi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        ylo, yhi = min(ys), max(ys)
        pad = 0.06 * ((yhi - ylo) or abs(yhi) or 1.0)
        ylo, yhi = ylo - pad, yhi + pad
        px = lambda v: x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)  # noqa: E731
        py = lambda v: y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)  # noqa: E731
        for v in nice_ticks(ylo, yhi, 5):
            if ylo <= v <= yhi:
                draw.line([(x0, py(v)), (x1, py(v))], fill=(235, 235, 235))
                draw.text((x0 - 4, py(v)), _label(v), fill="black", font=small, anchor="rm")
        for v in sorted(set(xs)):
            draw.text((px(v), y1 + 4), f"{v:g}", fill="black", font=small, anchor="mt")
        for k, series_name in enumerate(names):
            if series_name not in series:
                continue
            pts = [(px(x), py(y)) for x, y in zip(*series[series_name]) if math.isfinite(y)]
            color = colors[k % len(colors)]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text(((x0 + x1) // 2, y1 + 22), xlabel, fill="black", font=small, anchor="mt")
    for k, series_name in enumerate(names):
        y = top + ph + 50 + 18 * k
        draw.rectangle([left, y - 5, left + 12, y + 5], fill=colors[k % len(colors)])
        draw.text((left + 18, y), series_name, fill="black", font=small, anchor="lm")
    _save(img, path)
