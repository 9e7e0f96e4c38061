"""The coordinator's events as one log, newest last, with a search box that filters and highlights."""
from __future__ import annotations

import textwrap
from bisect import bisect_left, bisect_right

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input

from .. import fmt
from ..state import LogEvent, SwarmState
from .base import SwarmPane

KIND_STYLES = {"reject": "bold red", "quarantine": "bold white on red", "verify": "bold yellow", "version": "green",
               "eval": "magenta", "join": "cyan", "pool": "yellow", "lease": "blue", "round": "blue",
               "admin": "bold magenta"}
KIND_WIDTH = max(map(len, KIND_STYLES))
PREFIX = 9 + KIND_WIDTH + 1  # "12:03:04 quarantine "


def kind_label(kind: str) -> Text:
    """An event's kind in its colour, padded to one width so the texts line up."""
    shown = kind[:KIND_WIDTH]
    return Text(shown, style=KIND_STYLES.get(kind, "bold")) + " " * (KIND_WIDTH + 1 - len(shown))


def matches(event: LogEvent, query: str) -> bool:
    haystack = f"{event.kind} {event.text}".lower()
    return all(word in haystack for word in query.lower().split())


class EventLog(ScrollView):
    """The events that match a query, newest last, wrapped under their own text.

    A long run has thousands of events, so the log is built incrementally (a snapshot only adds
    its new events), not at all while hidden, and only the lines on screen are rendered. It
    follows the newest event unless the viewer has scrolled up.
    """

    DEFAULT_CSS = "EventLog { overflow-x: hidden; scrollbar-gutter: stable; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.events: list[LogEvent] = []
        self.query_text = ""
        self.rows: list[tuple[LogEvent, str, bool]] = []  # (event, part of its text, first part?)
        self.last_id = 0  # the newest event in rows
        self.text_width = 0  # rows are wrapped to this

    def on_mount(self) -> None:
        self.anchor()  # stay at the bottom as lines come, until the viewer scrolls up

    def show(self, events: list[LogEvent], query: str) -> None:
        if query != self.query_text:
            self.rows, self.last_id = [], 0
            self.anchor()  # a new search shows its newest matches
        self.events, self.query_text = events, query
        self._update()

    def on_resize(self, event: Resize) -> None:
        self._update()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.size.height and new_value >= self.max_scroll_y:
            self.anchor()  # scrolled back down to the newest: follow again

    def _update(self) -> None:
        if not self.size.height:
            return  # hidden: it catches up when shown (a resize)
        width = self.scrollable_content_region.width
        text_width = max(width - PREFIX, 8)
        if text_width != self.text_width or (self.events and self.events[-1].id < self.last_id):
            # Rewrap everything at a new width, or start over: the coordinator's ids restarted.
            self.rows, self.last_id, self.text_width = [], 0, text_width
        if self.rows and self.events:  # events trimmed off the front of the state leave the log too
            del self.rows[:bisect_left(self.rows, self.events[0].id, key=lambda row: row[0].id)]
        new = self.events[bisect_right(self.events, self.last_id, key=lambda e: e.id):]
        self.rows += [(e, part, i == 0) for e in new if matches(e, self.query_text)
                      for i, part in enumerate(textwrap.wrap(e.text, text_width) or [""])]
        self.last_id = max(self.last_id, new[-1].id if new else 0)
        self.virtual_size = Size(width, len(self.rows))
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, index = self.scrollable_content_region.width, self.scroll_offset.y + y
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        event, part, first = self.rows[index]
        if first:
            line = Text.assemble((fmt.hms(event.time_ms) + " ", "dim"), kind_label(event.kind))
        else:
            line = Text(" " * PREFIX)
        body = Text(part)
        body.highlight_words(self.query_text.split(), style="reverse", case_sensitive=False)
        line.append_text(body)
        if first:
            line.highlight_words(self.query_text.split(), style="reverse", case_sensitive=False)
        return Strip(line.render(self.app.console)).apply_style(self.rich_style).crop_extend(0, width, self.rich_style)


class LogsPane(SwarmPane):
    BINDINGS = [Binding("slash", "search", "Search"), Binding("escape", "leave_search", "Log", show=False)]
    DEFAULT_CSS = """
    LogsPane #search { border: none; height: 1; padding: 0 1; }
    LogsPane EventLog { height: 1fr; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.events: list[LogEvent] = []

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ search events: kind or text, e.g. reject, version, a node id…", id="search")
        yield EventLog()

    def show(self, state: SwarmState) -> None:
        self.events = state.events
        self._render_log()

    def _render_log(self) -> None:
        self.query_one(EventLog).show(self.events, self.query_one("#search", Input).value)

    @on(Input.Changed, "#search")
    def _search_changed(self) -> None:
        self._render_log()

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    @on(Input.Submitted, "#search")
    def action_leave_search(self) -> None:
        self.query_one(EventLog).focus()
