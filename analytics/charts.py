"""Render small SVG charts on the server (the dashboard loads nothing remote)."""

from __future__ import annotations

from django.utils.html import escape

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 40
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#9c755f",
)


def _frame(body: list[str], *, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-size="11" '
        f'font-family="sans-serif"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def _x_labels(dates: list[str], step: float) -> list[str]:
    every = max(1, len(dates) // 7)
    # Count from the last date, so today (the day people look for) is labelled.
    last = len(dates) - 1
    return [
        f'<text x="{LEFT + step * (i + 0.5):.1f}" y="{HEIGHT - BOTTOM + 16}" '
        f'text-anchor="middle">{escape(d[5:])}</text>'
        for i, d in enumerate(dates)
        if (last - i) % every == 0
    ]


def _legend(names: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = TOP + 14 * i
        color = PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{y}" width="10" height="10" '
            f'fill="{color}"/><text x="{WIDTH - RIGHT + 26}" y="{y + 9}">'
            f"{escape(name)}</text>"
        )
    return out


def stacked_bars(*, dates: list[str], series: dict[str, list[int]], title: str) -> str:
    """Return an SVG of daily bars stacked by series (e.g. volume per type)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(values[i] for values in series.values()) for i in range(len(dates))]
    peak = max(totals, default=0) or 1
    step = plot_w / max(1, len(dates))
    body = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" '
        f'y2="{TOP + plot_h}" stroke="#999"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 8}" text-anchor="end">{peak}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    base = [0.0] * len(dates)
    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for i, value in enumerate(values):
            if not value:
                continue
            h = plot_h * value / peak
            y = TOP + plot_h - base[i] - h
            body.append(
                f'<rect x="{LEFT + step * i + step * 0.15:.1f}" y="{y:.1f}" '
                f'width="{step * 0.7:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{escape(dates[i])} {escape(name)}: {value}</title></rect>"
            )
            base[i] += h
    return _frame(body + _x_labels(dates, step) + _legend(list(series)), title=title)


def lines(
    *, dates: list[str], series: dict[str, list[float | None]], title: str
) -> str:
    """Return an SVG of one line per series on a fixed [-1, 1] axis (sentiment)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(dates))

    def y_of(v: float) -> float:
        return TOP + plot_h * (1 - (v + 1) / 2)

    body = []
    for v in (1, 0, -1):
        body.append(
            f'<line x1="{LEFT}" y1="{y_of(v):.1f}" x2="{LEFT + plot_w}" '
            f'y2="{y_of(v):.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v}</text>'
        )
    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        points = [
            (LEFT + step * (i + 0.5), y_of(v), dates[i], v)
            for i, v in enumerate(values)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" '
                'stroke-width="2"/>'
            )
        body.extend(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>'
            f"{escape(d)} {escape(name)}: {v:.3f}</title></circle>"
            for x, y, d, v in points
        )
    return _frame(body + _x_labels(dates, step) + _legend(list(series)), title=title)
