"""A data dir from an older potluck opens: missing columns are added with their defaults, rows kept."""
import re
import sqlite3

import pytest

from coordinator.migrate import SchemaError, add_missing_columns
from coordinator.store import SCHEMA, Store

# The nodes table as an older potluck made it, before holding_version and the role columns.
OLD_NODES_TABLE = """CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, name TEXT NOT NULL, role INTEGER NOT NULL,
    hardware BLOB NOT NULL, registered_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    last_nonce INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'registered',
    tokens_per_s REAL NOT NULL DEFAULT 0, credit REAL NOT NULL DEFAULT 0,
    rollouts_accepted INTEGER NOT NULL DEFAULT 0, rollouts_rejected INTEGER NOT NULL DEFAULT 0,
    tokens_generated INTEGER NOT NULL DEFAULT 0);"""
OLD_SCHEMA = re.sub(r"CREATE TABLE IF NOT EXISTS nodes \(.*?\);", lambda _: OLD_NODES_TABLE, SCHEMA, count=1,
                    flags=re.DOTALL).replace(",\n    proofs BLOB NOT NULL DEFAULT x''", "")


def make_old_data_dir(path, schema: str) -> None:
    db = sqlite3.connect(path)
    db.executescript(schema)
    db.execute("INSERT INTO nodes (node_id, public_key, name, role, hardware, registered_ms, last_seen_ms, "
               "last_nonce, credit) VALUES ('n1', x'00', 'old', 1, x'', 1, 2, 3, 42.5)")
    db.execute("INSERT INTO rollouts (group_id, sample_index, completion_ids, logprobs, reward, finished) "
               "VALUES (7, 0, x'01', x'02', 1.0, 1)")
    db.execute("DROP TABLE rounds")  # made later still: the schema creates it
    db.commit()
    db.close()


def test_an_older_data_dir_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    assert "holding_version" not in OLD_SCHEMA and "quarantined" not in OLD_SCHEMA and "proofs BLOB" not in OLD_SCHEMA
    make_old_data_dir(tmp_path / "coordinator.db", OLD_SCHEMA)
    store = Store(tmp_path / "coordinator.db")
    try:
        node = store.db.execute("SELECT credit, holding_version, quarantined FROM nodes WHERE node_id='n1'")
        assert tuple(node.fetchone()) == (42.5, None, 0)
        assert store.db.execute("SELECT proofs FROM rollouts").fetchone()[0] == b""
        assert store.db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 0
        assert add_missing_columns(store.db, SCHEMA) == []  # nothing left to add: opening twice is a no-op
    finally:
        store.close()


def test_a_column_without_a_default_is_a_clear_error(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE bans (node_id TEXT PRIMARY KEY, time_ms INTEGER NOT NULL)")
    with pytest.raises(SchemaError, match="'bans' lacks column 'reason'.*fresh data dir"):
        add_missing_columns(db, SCHEMA)
