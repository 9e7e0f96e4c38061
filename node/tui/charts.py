"""A line chart drawn in braille dots (2×4 per cell), so a 60×12 cell area plots 120×48 points."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

# Bit of each dot in a braille cell, by [row][column] (Unicode braille patterns, U+2800 + bits).
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_Y_LABEL = 4  # "0.50"


@dataclass(frozen=True)
class Series:
    label: str
    style: str
    points: Sequence[tuple[float, float]]  # (x, y), x ascending


def value_range(series: Sequence[Series]) -> tuple[float, float]:
    """[0, 1] for rewards and accuracies that stay in it; wider when the data goes beyond."""
    ys = [y for s in series for _, y in s.points]
    return min([0.0, *ys]), max([1.0, *ys])


def line_chart(series: Sequence[Series], width: int, height: int, y_range: tuple[float, float],
               x_label: Callable[[float], str] = lambda x: f"v{x:.0f}") -> Text:
    plot_w, plot_h = width - _Y_LABEL - 1, height - 1  # y labels and axis left, x axis below
    if plot_w < 4 or plot_h < 2:
        return Text("(no room for the chart)", style="dim")
    xs = [x for s in series for x, _ in s.points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = y_range
    cells: dict[tuple[int, int], dict[str, int]] = {}  # (column, row) -> {style: dot bits}

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        px = round((x - x0) / (x1 - x0) * (2 * plot_w - 1))
        py = round((y1 - y) / (y1 - y0) * (4 * plot_h - 1))
        return px, min(max(py, 0), 4 * plot_h - 1)

    def dot(px: int, py: int, style: str) -> None:
        cell = cells.setdefault((px // 2, py // 4), {})
        cell[style] = cell.get(style, 0) | _DOTS[py % 4][px % 2]

    for s in series:
        pixels = [to_pixel(x, y) for x, y in s.points]
        for (ax, ay), (bx, by) in zip(pixels, pixels[1:]):
            steps = max(abs(bx - ax), abs(by - ay), 1)
            for i in range(steps + 1):
                dot(round(ax + (bx - ax) * i / steps), round(ay + (by - ay) * i / steps), s.style)
        if len(pixels) == 1:
            dot(*pixels[0], s.style)

    text = Text(no_wrap=True, overflow="crop")
    labelled = {0: y1, plot_h // 2: (y0 + y1) / 2, plot_h - 1: y0}
    for row in range(plot_h):
        label = f"{labelled[row]:.2f}"[:_Y_LABEL].rjust(_Y_LABEL) if row in labelled else " " * _Y_LABEL
        text.append(label + ("┤" if row in labelled else "│"), style="dim")
        for column in range(plot_w):
            cell = cells.get((column, row))
            if cell is None:
                text.append(" ")
                continue
            # A cell has one colour: where curves cross it goes to the one with more dots there.
            style = max(cell, key=lambda k: bin(cell[k]).count("1"))
            bits = 0
            for b in cell.values():
                bits |= b
            text.append(chr(0x2800 + bits), style=style)
        text.append("\n")
    first = x_label(x0) if xs else ""
    last = x_label(max(xs)) if xs and max(xs) > x0 else ""
    axis = first + "─" * max(plot_w - len(first) - len(last), 1) + last
    text.append(" " * _Y_LABEL + "└" + axis[:plot_w], style="dim")
    return text
