"""The accuracy/latency trade-off as a small self-contained SVG for report.md.

Hand-written SVG rather than matplotlib: the picture needs a dozen points and a line,
and the bundle's report should not pull a plotting stack into the build host.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeport.schemas import Attempt

WIDTH, HEIGHT = 760, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 300, 30, 50
_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#757575", "skipped": "#757575"}


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    if high - low < 1e-12:
        return (start + end) / 2
    return start + (value - low) / (high - low) * (end - start)


def render_tradeoff_svg(
    attempts: list[Attempt],
    chosen: Attempt | None,
    metric: str,
    threshold: float | None,
    *,
    baseline: str,
) -> str | None:
    """Latency ratio (x) against the task metric (y); None when fewer than two points.
    `baseline` names what the ratios divide by (the catalogue's: "ONNX Runtime fp32")."""
    points = []
    for attempt in attempts:
        if attempt.latency_ratio is None or attempt.validation is None:
            continue
        value = attempt.validation.metric(metric)
        if value is not None:
            points.append((attempt, attempt.latency_ratio, value))
    if len(points) < 2:
        return None
    xs = [x for _, x, _ in points] + [1.0]
    ys = [y for _, _, y in points] + ([threshold] if threshold is not None else [])
    x_low, x_high = 0.0, max(xs) * 1.1
    y_low, y_high = min(ys), max(ys)
    margin = max((y_high - y_low) * 0.1, 1e-4)
    y_low, y_high = y_low - margin, y_high + margin
    plot_right = WIDTH - RIGHT

    def px(x: float) -> float:
        return _scale(x, x_low, x_high, LEFT, plot_right)

    def py(y: float) -> float:
        return _scale(y, y_low, y_high, HEIGHT - BOTTOM, TOP)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{plot_right}" y2="{HEIGHT - BOTTOM}" '
        'stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>',
        f'<text x="{(LEFT + plot_right) / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
        f"latency relative to {escape(baseline)} (lower is faster)</text>",
        f'<text x="16" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(metric)}</text>',
    ]
    for tick in range(5):
        x = x_low + (x_high - x_low) * tick / 4
        y = y_low + (y_high - y_low) * tick / 4
        parts.append(
            f'<text x="{px(x):.1f}" y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">{x:.2f}</text>'
        )
        parts.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.4f}</text>')
    if threshold is not None:
        parts.append(
            f'<line x1="{LEFT}" y1="{py(threshold):.1f}" '
            f'x2="{plot_right}" y2="{py(threshold):.1f}" '
            'stroke="#c62828" stroke-dasharray="4 3"/>'
            f'<text x="{plot_right + 4}" y="{py(threshold) + 4:.1f}" fill="#c62828">'
            f"tolerance {threshold}</text>"
        )
    parts.append(
        f'<line x1="{px(1.0):.1f}" y1="{TOP}" x2="{px(1.0):.1f}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#9e9e9e" stroke-dasharray="2 3"/>'
    )
    legend_y = TOP
    for index, (attempt, x, y) in enumerate(points, start=1):
        colour = _COLOURS[attempt.status]
        is_chosen = chosen is not None and attempt is chosen
        radius = 7 if is_chosen else 4
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" fill="{colour}"/>')
        if is_chosen:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="11" fill="none" stroke="black" '
                'stroke-width="2"/>'
            )
        parts.append(f'<text x="{px(x) + 8:.1f}" y="{py(y) - 6:.1f}">{index}</text>')
        variant = f" ({attempt.variant})" if attempt.variant else ""
        label = f"{index}. {attempt.recipe_id}{variant}{' (chosen)' if is_chosen else ''}"
        parts.append(
            f'<text x="{plot_right + 10}" y="{legend_y + 14 * index}" fill="{colour}">'
            f"{escape(label)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
