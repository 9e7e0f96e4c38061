"""A DataTable kept in step with the latest snapshot without losing the viewer's place."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    right: bool = False  # numbers align right
    fill: bool = False  # takes the width the other columns leave; longer text is cut with an ellipsis


Row = tuple[str, Sequence[Text]]  # (row key, cells in column order)


class SwarmTable(DataTable):
    """Shows exactly the rows it is given, in order, every couple of seconds.

    Column widths are set here from the content rather than left to DataTable's auto width, which
    is measured later, on idle: a table rebuilt between two renders would keep showing the widths
    of the headers alone.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id=id)
        self.shown_columns: list[tuple[Column, int]] = []
        self.given: tuple[Sequence[Column], Sequence[Row]] = ((), ())

    def show(self, columns: Sequence[Column], rows: Sequence[Row]) -> None:
        self.given = (columns, rows)
        widths = [max([len(c.label), *(cells[i].cell_len for _, cells in rows)]) for i, c in enumerate(columns)]
        if [c for c, _ in self.shown_columns] == list(columns):
            # Columns only grow, so they do not jitter as values come and go.
            widths = [max(new, old) for new, (_, old) in zip(widths, self.shown_columns)]
        fill = [i for i, c in enumerate(columns) if c.fill]
        if fill:
            rows = self._fill(fill[0], widths, rows)
        layout = list(zip(columns, widths))
        keys = [key for key, _ in rows]
        selected = self.selected_key()
        if layout != self.shown_columns:
            self.shown_columns = layout
            self.clear(columns=True)
            for column, width in layout:
                self.add_column(Text(column.label, justify="right" if column.right else "left"),
                                width=width, key=column.key)
        elif keys == [row.key.value for row in self.ordered_rows]:
            # Same rows in the same order: touch only changed cells, so the cursor and scroll stay put.
            for key, cells in rows:
                for shown, old, new in zip(self.ordered_columns, self.get_row(key), cells):
                    if not _same(old, new):
                        self.update_cell(key, shown.key, new)
            return
        else:
            self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self.select_key(selected)

    def _fill(self, column: int, widths: list[int], rows: Sequence[Row]) -> list[Row]:
        """Size the fill column to the room left (room for a scrollbar kept) and cut its cells to it."""
        others = sum(w for i, w in enumerate(widths) if i != column)
        room = self.size.width - self.styles.scrollbar_size_vertical - 2 * self.cell_padding * len(widths) - others
        widths[column] = max(room, len(self.given[0][column].label))
        cut = []
        for key, cells in rows:
            cells = list(cells)
            cells[column] = cells[column].copy()
            cells[column].truncate(widths[column], overflow="ellipsis")
            cut.append((key, cells))
        return cut

    def on_resize(self) -> None:
        if any(c.fill for c in self.given[0]):
            self.show(*self.given)

    def selected_key(self) -> str | None:
        if not 0 <= self.cursor_row < self.row_count:
            return None
        return self.ordered_rows[self.cursor_row].key.value

    def select_key(self, key: str | None) -> None:
        """Put the cursor on the row with this key, if it is shown."""
        keys = [row.key.value for row in self.ordered_rows]
        if key in keys:
            self.move_cursor(row=keys.index(key), animate=False)


def _same(old: object, new: Text) -> bool:
    # Text equality ignores the base style, and a row that dims when its node goes offline must redraw.
    if not isinstance(old, Text):
        return False
    return (old.plain, old.style, old.spans, old.justify) == (new.plain, new.style, new.spans, new.justify)
