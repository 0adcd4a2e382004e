"""A small inline SVG chart: credits per day as bars, tokens per day as a line (its own scale)."""

from __future__ import annotations

from decimal import Decimal

from markupsafe import Markup, escape

from gateway.dashboard.data import DailySeries
from shared.money import micro_to_credits

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 60, 16, 34


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1
    exp = Decimal(str(top)).adjusted()
    base = 10 ** exp
    for step in (1, 2, 2.5, 5, 10):
        if top <= step * base:
            return step * base
    return 10 * base


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def daily_chart(series: DailySeries, title: str = "Credits and tokens per day") -> Markup:
    n = len(series.days)
    credit_values = [micro_to_credits(c) for c in series.credits_micro]
    cmax, tmax = _nice(max(credit_values, default=0)), _nice(max(series.tokens, default=0))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    bar_w = max(2.0, slot * 0.6)
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="chart-title chart-desc" '
             f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
             f'<title id="chart-title">{escape(title)}</title>',
             f'<desc id="chart-desc">{n} days from {series.days[0]} to {series.days[-1]}: '
             f'{sum(credit_values):.4f} credits and {sum(series.tokens)} tokens in all.</desc>']
    for i in range(5):  # grid and axis labels
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis credits" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{_fmt(cmax * i / 4)}</text>')
        parts.append(f'<text class="axis tokens" x="{W - RIGHT + 6}" y="{y + 4:.1f}">{_fmt(tmax * i / 4)}</text>')
    label_every = max(1, round(n / 8))
    points = []
    for i, d in enumerate(series.days):
        x = LEFT + slot * i + slot / 2
        h = plot_h * credit_values[i] / cmax
        tip = (f"{d}: {credit_values[i]:.4f} credits, {series.tokens[i]} tokens, "
               f"{series.requests[i]} requests")
        parts.append(f'<rect class="bar" x="{x - bar_w / 2:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{max(h, 0):.1f}"><title>{escape(tip)}</title></rect>')
        points.append(f"{x:.1f},{TOP + plot_h - plot_h * series.tokens[i] / tmax:.1f}")
        if i % label_every == 0 or i == n - 1:
            parts.append(f'<text class="axis" x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                         f'{d.strftime("%b %d")}</text>')
    parts.append(f'<polyline class="line" points="{" ".join(points)}"/>')
    for p, tokens, d in zip(points, series.tokens, series.days):
        x, y = p.split(",")
        parts.append(f'<circle class="dot" cx="{x}" cy="{y}" r="3"><title>{d}: {tokens} tokens</title></circle>')
    parts.append(f'<text class="axis-title credits" x="{LEFT - 6}" y="{H - 4}" text-anchor="end">credits</text>')
    parts.append(f'<text class="axis-title tokens" x="{W - RIGHT + 6}" y="{H - 4}">tokens</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
