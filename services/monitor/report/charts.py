"""Inline SVG charts for the drift report, drawn from numbers with no library and no external resource.

The report must be readable offline and behind networks that reach nothing, so
every chart is a self-contained ``<svg>`` element written here: no script, no
font or stylesheet fetched, every text escaped (category names come from data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from itertools import pairwise
from typing import Any

REFERENCE_COLOUR = "#4c78a8"
LIVE_COLOUR = "#f58518"
ALARM_COLOUR = "#d62728"
WIDTH, HEIGHT = 420, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 22, 30


@dataclass(frozen=True)
class Frame:
    """Maps data coordinates onto the plot area of one chart."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = WIDTH
    height: int = HEIGHT

    def x(self, value: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return LEFT + (value - self.x0) / span * (self.width - LEFT - RIGHT)

    def y(self, value: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return self.height - BOTTOM - (value - self.y0) / span * (self.height - TOP - BOTTOM)


def fmt(value: float) -> str:
    """A short tick label: three significant digits."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    return f"{value:.3g}"


def _svg(body: list[str], title: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (
        f'<svg role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def _legend(frame: Frame, items: Sequence[tuple[str, str]]) -> list[str]:
    out, x = [], float(LEFT)
    for label, colour in items:
        out.append(f'<rect x="{x:.1f}" y="6" width="10" height="10" fill="{colour}" fill-opacity="0.6"/>')
        out.append(f'<text x="{x + 14:.1f}" y="15">{escape(label)}</text>')
        x += 18 + 6.5 * len(label)
    return out


def _y_axis(frame: Frame, ticks: Sequence[float], suffix: str = "") -> list[str]:
    out = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{frame.height - BOTTOM}" stroke="#999"/>']
    for t in ticks:
        y = frame.y(t)
        out.append(f'<line x1="{LEFT - 3}" y1="{y:.1f}" x2="{frame.width - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 5}" y="{y + 3:.1f}" text-anchor="end">{fmt(t)}{suffix}</text>')
    return out


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def numeric_histogram(h: dict[str, Any], title: str) -> str:
    """Reference and live densities over the reference's quantile bins, on the feature's own axis.

    Quantile bins hold equal reference mass but differ in width, so heights are
    densities (share / width): the reference then looks like its distribution,
    and a shifted window shows as mass moving along the axis. The two open end
    bins are drawn up to the reference's min and max (values beyond them are
    counted in the outer bins and reported as ``out_of_range``).
    """
    edges = [float(e) for e in h["edges"]]
    lo, hi = min([float(h["min"]), *edges]), max([float(h["max"]), *edges])
    if hi <= lo:
        hi = lo + 1.0
    bounds = [lo, *edges, hi]
    floor = (hi - lo) / 200  # a bin of (almost) no width still gets a visible bar
    widths = [max(b - a, floor) for a, b in pairwise(bounds)]
    ref = [s / w for s, w in zip(_shares(h["reference"]), widths, strict=True)]
    live = [s / w for s, w in zip(_shares(h["live"]), widths, strict=True)]
    top = max([*ref, *live, 1e-12]) * 1.1
    frame = Frame(lo, hi, 0.0, top)
    body = _legend(frame, [("reference", REFERENCE_COLOUR), ("current window", LIVE_COLOUR)])
    body += [f'<line x1="{LEFT}" y1="{frame.y(0):.1f}" x2="{WIDTH - RIGHT}" y2="{frame.y(0):.1f}" stroke="#999"/>']
    for densities, colour, cls in ((ref, REFERENCE_COLOUR, "reference"), (live, LIVE_COLOUR, "live")):
        for a, w, d in zip(bounds, widths, densities, strict=False):
            x, y = frame.x(a), frame.y(d)
            body.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(frame.x(a + w) - x, 0.8):.1f}" '
                f'height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.45" stroke="{colour}"/>'
            )
    for tick in _ticks(lo, hi):
        body.append(f'<text x="{frame.x(tick):.1f}" y="{HEIGHT - 14}" text-anchor="middle">{fmt(tick)}</text>')
    body.append(f'<text x="{LEFT}" y="{HEIGHT - 2}" fill="#666">density (share per unit); x: value</text>')
    return _svg(body, title)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def categorical_bars(h: dict[str, Any], title: str) -> str:
    """Reference and live shares per category, side by side (``__unseen__``: categories never trained on)."""
    names = list(h["categories"])
    ref, live = _shares(h["reference"]), _shares(h["live"])
    keep = [i for i, name in enumerate(names) if name != "__unseen__" or live[i] > 0]
    top = max([ref[i] for i in keep] + [live[i] for i in keep] + [1e-12]) * 1.15
    frame = Frame(0.0, float(len(keep)), 0.0, top)
    body = _legend(frame, [("reference", REFERENCE_COLOUR), ("current window", LIVE_COLOUR)])
    body += _y_axis(frame, [top / 1.15 * f for f in (0.0, 0.5, 1.0)])
    slot = frame.x(1) - frame.x(0)
    for pos, i in enumerate(keep):
        for offset, share, colour, cls in ((0.1, ref[i], REFERENCE_COLOUR, "reference"),
                                           (0.5, live[i], LIVE_COLOUR, "live")):  # fmt: skip
            x, y = frame.x(pos + offset), frame.y(share)
            body.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.4:.1f}" '
                f'height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.7"/>'
            )
        label = names[i] if len(names[i]) <= 12 else names[i][:11] + "…"
        body.append(f'<text x="{frame.x(pos + 0.5):.1f}" y="{HEIGHT - 14}" text-anchor="middle">{escape(label)}</text>')
    body.append(f'<text x="{LEFT}" y="{HEIGHT - 2}" fill="#666">share of rows per category</text>')
    return _svg(body, title)


@dataclass(frozen=True)
class Point:
    """One judged window on the timeline."""

    index: int
    value: float | None
    """The live metric (None: too few labels yet)."""
    flagged: bool
    alarm: bool
    """An alarm was raised on this window."""


def timeline(points: Sequence[Point], metric: str, holdout: float | None, threshold: float | None) -> str:
    """The live metric per judged window, the holdout line, the alarm threshold, flagged windows and alarms."""
    values = [p.value for p in points if p.value is not None]
    refs = [v for v in (holdout, threshold) if v is not None]
    lo, hi = min([*values, *refs], default=0.0), max([*values, *refs], default=1.0)
    pad = (hi - lo) * 0.1 or 0.05
    frame = Frame(0.0, float(max(len(points) - 1, 1)), lo - pad, hi + pad, width=860)
    body = _legend(frame, [(f"live {metric}", LIVE_COLOUR), ("holdout", REFERENCE_COLOUR), ("alarm", ALARM_COLOUR)])
    body += _y_axis(frame, [frame.y0, (frame.y0 + frame.y1) / 2, frame.y1])
    for level, colour, dash in ((holdout, REFERENCE_COLOUR, "6 3"), (threshold, ALARM_COLOUR, "2 3")):
        if level is not None:
            y = frame.y(level)
            body.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{860 - RIGHT}" y2="{y:.1f}" stroke="{colour}" '
                        f'stroke-dasharray="{dash}"/>')  # fmt: skip
    for pos, p in enumerate(points):
        if p.alarm:
            x = frame.x(pos)
            body.append(f'<line class="alarm" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" '
                        f'stroke="{ALARM_COLOUR}" stroke-width="2"/>')  # fmt: skip
    segments: list[list[str]] = [[]]
    for pos, p in enumerate(points):
        colour = ALARM_COLOUR if p.flagged else LIVE_COLOUR
        note = " (flagged)" if p.flagged else ""
        if p.value is None:  # too few labels for a metric: the window is still marked, on the axis, hollow
            segments.append([])
            body.append(f'<circle class="{"flagged" if p.flagged else "window"}" cx="{frame.x(pos):.1f}" '
                        f'cy="{frame.y(frame.y0):.1f}" r="3" fill="none" stroke="{colour}"><title>window {p.index}: '
                        f"no {metric} yet{note}</title></circle>")  # fmt: skip
            continue
        segments[-1].append(f"{frame.x(pos):.1f},{frame.y(p.value):.1f}")
        body.append(f'<circle class="{"flagged" if p.flagged else "window"}" cx="{frame.x(pos):.1f}" '
                    f'cy="{frame.y(p.value):.1f}" r="3" fill="{colour}"><title>window {p.index}: '
                    f"{fmt(p.value)}{note}</title></circle>")  # fmt: skip
    body += [f'<polyline points="{" ".join(s)}" fill="none" stroke="{LIVE_COLOUR}"/>' for s in segments if len(s) > 1]
    if points:
        for pos, anchor in sorted({(0, "start"), (len(points) - 1, "end")}):
            body.append(f'<text x="{frame.x(pos):.1f}" y="{HEIGHT - 14}" text-anchor="{anchor}">'
                        f"window {points[pos].index}</text>")  # fmt: skip
    body.append(f'<text x="{LEFT}" y="{HEIGHT - 2}" fill="#666">judged windows, oldest to newest; red: flagged</text>')
    return _svg(body, f"live {metric} over time", width=860)
