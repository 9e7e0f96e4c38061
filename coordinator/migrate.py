"""Opening a data dir made by an older potluck: columns the schema gained since are added in place.

SQLite's CREATE TABLE IF NOT EXISTS leaves an existing table as it was, so a table made before a
column was added lacks it. Comparing each table with the one the current schema makes in a scratch
database finds what is missing; ALTER TABLE ADD COLUMN adds it with its default, keeping every row.
A column that cannot be added that way (NOT NULL without a default) is a clear error instead.
"""
from __future__ import annotations

import sqlite3


class SchemaError(ValueError):  # the CLI reports ValueErrors in one line and exits 2
    pass


def _columns(db: sqlite3.Connection, table: str) -> list[tuple]:
    # table_info rows: (cid, name, type, notnull, dflt_value, pk)
    return [tuple(row) for row in db.execute(f"PRAGMA table_info({table})")]


def _tables(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]


def missing_columns(db: sqlite3.Connection, schema: str) -> list[tuple[str, str]]:
    """(table, column definition) for every column the schema has and the database lacks."""
    wanted = sqlite3.connect(":memory:")
    try:
        wanted.executescript(schema)
        missing, existing = [], set(_tables(db))
        for table in (t for t in _tables(wanted) if t in existing):  # new tables: the schema makes them
            present = {column[1] for column in _columns(db, table)}
            for _, name, kind, notnull, default, _ in _columns(wanted, table):
                if name in present:
                    continue
                if notnull and default is None:
                    raise SchemaError(f"the data dir's table {table!r} lacks column {name!r}, which has no "
                                      "default to fill existing rows with: start from a fresh data dir")
                definition = f"{name} {kind}" + (" NOT NULL" if notnull else "")
                missing.append((table, definition + (f" DEFAULT {default}" if default is not None else "")))
        return missing
    finally:
        wanted.close()


def add_missing_columns(db: sqlite3.Connection, schema: str) -> list[str]:
    """Bring an existing database's tables up to the schema; returns what was added, as 'table.column'."""
    added = []
    for table, definition in missing_columns(db, schema):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")
        added.append(f"{table}.{definition.split()[0]}")
    return added
