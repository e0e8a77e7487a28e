"""Server-rendered SVG charts: the geometry here, the markup in templates/_charts.html."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from api.dashboard.render import utc_text

WIDTH = 720
HEIGHT = 180
PAD_LEFT = 44
PAD_BOTTOM = 22
PAD_TOP = 8


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    tone: str
    label: str


@dataclass
class Chart:
    title: str
    max_value: float
    unit: str
    bars: list[Bar] = field(default_factory=list)
    #: (x, text, text-anchor) under the plot
    ticks: list[tuple[float, str, str]] = field(default_factory=list)
    #: (y, text) left of the plot
    grid: list[tuple[float, str]] = field(default_factory=list)
    #: (tone, text) for the legend
    legend: list[tuple[str, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def empty(self) -> bool:
        return not any(bar.height > 0 for bar in self.bars)


def _plot_height() -> float:
    return HEIGHT - PAD_BOTTOM - PAD_TOP


def _scale(max_value: float) -> float:
    return _plot_height() / max_value if max_value > 0 else 0.0


def _frame(chart: Chart, minutes: Sequence[datetime]) -> float:
    """Axis ticks and grid for `minutes`; the width of one minute's slot."""
    slot = (WIDTH - PAD_LEFT) / max(len(minutes), 1)
    for i, minute in enumerate(minutes):
        last = i == len(minutes) - 1
        if i % 15 == 0 or last:  # the last label ends at the right edge, so it is not cut off
            x = WIDTH - 1 if last else PAD_LEFT + i * slot + slot / 2
            chart.ticks.append((x, utc_text(minute)[11:16], "end" if last else "middle"))
    scale = _scale(chart.max_value)
    for fraction in (0.0, 0.5, 1.0):
        value = chart.max_value * fraction
        chart.grid.append((HEIGHT - PAD_BOTTOM - value * scale, f"{value:,.0f}"))
    return slot


def stacked_bars(
    title: str, series: Sequence[tuple[datetime, dict[str, int]]], tones: dict[str, str], unit: str = "runs"
) -> Chart:
    """One stacked bar per minute; `tones` orders the keys (status -> tone)."""
    totals = [sum(counts.get(key, 0) for key in tones) for _, counts in series]
    chart = Chart(
        title, float(max(totals, default=0)), unit, legend=[(tone, key) for key, tone in tones.items()]
    )
    slot = _frame(chart, [minute for minute, _ in series])
    scale = _scale(chart.max_value)
    for i, (minute, counts) in enumerate(series):
        base = float(HEIGHT - PAD_BOTTOM)
        for key, tone in tones.items():
            count = counts.get(key, 0)
            if not count:
                continue
            height = count * scale
            base -= height
            label = f"{utc_text(minute)[11:16]} UTC: {count} {key}"
            chart.bars.append(Bar(PAD_LEFT + i * slot + 1, base, max(slot - 2, 1), height, tone, label))
    return chart


def lateness_bars(title: str, series: Sequence[tuple[datetime, tuple[float, float] | None]]) -> Chart:
    """Per minute: a p99 bar with the p50 bar in front of it (milliseconds)."""
    peaks = [point[1] for _, point in series if point is not None]
    chart = Chart(title, float(max(peaks, default=0)), "ms", legend=[("p99", "p99"), ("p50", "p50")])
    slot = _frame(chart, [minute for minute, _ in series])
    scale = _scale(chart.max_value)
    for i, (minute, point) in enumerate(series):
        if point is None:
            continue
        p50, p99 = point
        when = utc_text(minute)[11:16]
        for tone, value in (("p99", p99), ("p50", p50)):
            height = max(value, 0) * scale
            label = f"{when} UTC: {tone} {value:,.0f} ms"
            chart.bars.append(
                Bar(
                    PAD_LEFT + i * slot + 1,
                    HEIGHT - PAD_BOTTOM - height,
                    max(slot - 2, 1),
                    height,
                    tone,
                    label,
                )
            )
    return chart
