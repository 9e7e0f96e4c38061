"""The coordinator's durable state in SQLite (WAL): nodes, leases, rollout groups, versions, events.

Every change is one transaction that commits before the RPC that caused it is answered, so a
`kill -9` loses nothing that was acknowledged.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .migrate import add_missing_columns
from .online import OnlineRoles

log = logging.getLogger("potluck.coordinator")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, name TEXT NOT NULL, role INTEGER NOT NULL,
    hardware BLOB NOT NULL, registered_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    last_nonce INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'registered',
    tokens_per_s REAL NOT NULL DEFAULT 0, credit REAL NOT NULL DEFAULT 0,
    rollouts_accepted INTEGER NOT NULL DEFAULT 0, rollouts_rejected INTEGER NOT NULL DEFAULT 0,
    tokens_generated INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0, verified_ok INTEGER NOT NULL DEFAULT 0,
    verified_failed INTEGER NOT NULL DEFAULT 0, holding_version INTEGER,
    auto_role INTEGER NOT NULL DEFAULT 0, role_since_ms INTEGER NOT NULL DEFAULT 0,
    max_prompts INTEGER NOT NULL DEFAULT 0, train_oom INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, kind TEXT NOT NULL, version INTEGER NOT NULL,
    spec TEXT NOT NULL, created_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS leases_by_state ON leases (state, kind);
CREATE INDEX IF NOT EXISTS leases_by_deadline ON leases (state, deadline_ms);
CREATE INDEX IF NOT EXISTS leases_by_node ON leases (node_id, state);
CREATE TABLE IF NOT EXISTS groups (
    group_id INTEGER PRIMARY KEY AUTOINCREMENT, lease_id TEXT NOT NULL, node_id TEXT NOT NULL,
    version INTEGER NOT NULL, task_id INTEGER NOT NULL, prompt_ids BLOB NOT NULL,
    reward_mean REAL NOT NULL, reward_std REAL NOT NULL,
    state TEXT NOT NULL, train_lease TEXT, created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS groups_by_state ON groups (state, version);
CREATE INDEX IF NOT EXISTS groups_by_lease ON groups (lease_id);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id INTEGER PRIMARY KEY AUTOINCREMENT, group_id INTEGER NOT NULL, sample_index INTEGER NOT NULL,
    completion_ids BLOB NOT NULL, logprobs BLOB NOT NULL, reward REAL NOT NULL, finished INTEGER NOT NULL,
    proofs BLOB NOT NULL DEFAULT x'');
CREATE INDEX IF NOT EXISTS rollouts_by_group ON rollouts (group_id);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, parent INTEGER, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    manifest TEXT NOT NULL, signature BLOB NOT NULL, created_ms INTEGER NOT NULL, trainer TEXT NOT NULL,
    rollouts_used INTEGER NOT NULL DEFAULT 0, eval_accuracy REAL);
-- One row per accepted-for-checking rollout submission (its rollout/eval lease). state: pending
-- (a validator's check to come), accepted, rejected, void (its node was caught before it was checked).
CREATE TABLE IF NOT EXISTS submissions (
    lease_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, kind TEXT NOT NULL, version INTEGER NOT NULL,
    state TEXT NOT NULL, verified INTEGER NOT NULL, tokens INTEGER NOT NULL, rollouts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, verify_lease TEXT);
CREATE INDEX IF NOT EXISTS submissions_by_state ON submissions (state, node_id);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, lease_id TEXT NOT NULL, node_id TEXT NOT NULL,
    validator TEXT NOT NULL, accepted INTEGER NOT NULL, check_name TEXT NOT NULL, detail TEXT NOT NULL,
    figures TEXT NOT NULL, time_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bans (
    node_id TEXT PRIMARY KEY, reason TEXT NOT NULL, time_ms INTEGER NOT NULL);
-- DiLoCo rounds (issue 4). state: forming, training, published, rejected, failed. members: JSON
-- [{node_id, maddrs, lease_id, group_ids}] in joining order.
CREATE TABLE IF NOT EXISTS rounds (
    round_id TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL, created_ms INTEGER NOT NULL,
    members TEXT NOT NULL, group_ids TEXT NOT NULL, outcome TEXT NOT NULL DEFAULT '');
-- A trainer's result in a round: its candidate version blob and its own pseudo-gradient (both in the
-- blob store), the peers its all-reduce combined, and the verdict: pending, agreed, outvoted, rejected.
CREATE TABLE IF NOT EXISTS round_results (
    round_id TEXT NOT NULL, node_id TEXT NOT NULL, candidate TEXT NOT NULL, size INTEGER NOT NULL,
    delta TEXT NOT NULL, samples INTEGER NOT NULL, averaged_with TEXT NOT NULL, delta_norm REAL NOT NULL,
    verdict TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (round_id, node_id));
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def pack_ints(values) -> bytes:
    return np.asarray(values, dtype="<u4").tobytes()


def pack_floats(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_ints(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype="<u4").tolist()


def unpack_floats(blob: bytes) -> list[float]:
    return np.frombuffer(blob, dtype="<f4").tolist()


def pack_proofs(proofs) -> bytes:
    """A rollout's proofs in one blob: each one preceded by its length (u16, big-endian)."""
    return b"".join(len(p).to_bytes(2, "big") + p for p in proofs)


def unpack_proofs(blob: bytes) -> list[bytes]:
    proofs, at = [], 0
    while at < len(blob):
        size = int.from_bytes(blob[at:at + 2], "big")
        proofs.append(blob[at + 2:at + 2 + size])
        at += 2 + size
    return proofs


# Group states of accepted training rollouts; the others are pending, rejected, void and eval.
ACCEPTED_GROUP_STATES = ("pool", "reserved", "consumed", "skipped", "stale")


@dataclass(frozen=True)
class Lease:
    lease_id: str
    node_id: str
    kind: str  # rollout | eval | train
    version: int
    spec: dict
    created_ms: int
    deadline_ms: int
    state: str  # active | done | expired | returned


class Store:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode is durable against a killed process (only an OS crash can lose the
        # last transactions), which is the failure a coordinator must survive without loss.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        # Columns first: the schema's indexes may name columns an older data dir lacks.
        for column in add_missing_columns(self.db, SCHEMA):
            log.info("data dir upgraded: added column %s", column)
        self.db.executescript(SCHEMA)
        self._online = OnlineRoles({}, 0.0)  # online_roles' shared view (stale: read at first use)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # meta
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # nodes
    def node(self, node_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM nodes WHERE node_id=?", (node_id,)).fetchone()

    def nodes(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM nodes ORDER BY registered_ms").fetchall()

    def upsert_node(self, node_id: str, public_key: bytes, name: str, role: int, hardware: bytes,
                    auto_role: bool = False) -> None:
        """auto_role: it joined with --role auto, so the coordinator may move it (roles.py); a node that
        rejoins in the role it held keeps the time it took it (the hold against flapping)."""
        t = now_ms()
        self.db.execute(
            "INSERT INTO nodes (node_id, public_key, name, role, hardware, registered_ms, last_seen_ms, last_nonce,"
            " auto_role, role_since_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT(node_id) DO UPDATE SET"
            " name=excluded.name, role=excluded.role, hardware=excluded.hardware,"
            " last_seen_ms=excluded.last_seen_ms, state='registered', auto_role=excluded.auto_role,"
            " role_since_ms=CASE WHEN nodes.role=excluded.role THEN nodes.role_since_ms ELSE excluded.role_since_ms END",
            (node_id, public_key, name, role, hardware, t, t, int(auto_role), t))
        self._online.set(node_id, role)

    def set_role(self, node_id: str, role: int) -> None:
        self.db.execute("UPDATE nodes SET role=?, role_since_ms=? WHERE node_id=?", (role, now_ms(), node_id))
        self._online.set(node_id, role)

    def set_out_of_memory(self, node_id: str, max_prompts: int, training: bool) -> None:
        """After the node ran out of memory: its prompt cap per rollout lease (0: none), and whether it
        ran out training (an auto node is then not made a trainer again)."""
        self.db.execute("UPDATE nodes SET max_prompts=?, train_oom=MAX(train_oom, ?) WHERE node_id=?",
                        (max_prompts, int(training), node_id))

    def online_roles(self, seen_since_ms: Callable[[], int], max_age_s: float) -> OnlineRoles:
        """The roles of the nodes that have not left, are not quarantined and were seen since
        seen_since_ms(); read again once max_age_s old, registrations and moves kept in meanwhile."""
        if self._online.stale:
            rows = self.db.execute("SELECT node_id, role FROM nodes WHERE state != 'left' AND quarantined = 0"
                                   " AND last_seen_ms >= ?", (seen_since_ms(),)).fetchall()
            self._online = OnlineRoles({row[0]: row[1] for row in rows}, max_age_s)
        return self._online

    def claim_nonce(self, node_id: str, nonce: int) -> bool:
        """Record nonce as the node's last one if it is greater than the last; False if not (a replay)."""
        cursor = self.db.execute(
            "UPDATE nodes SET last_nonce=?, last_seen_ms=? WHERE node_id=? AND last_nonce < ?",
            (nonce, now_ms(), node_id, nonce))
        return cursor.rowcount == 1

    def set_node_status(self, node_id: str, state: str) -> None:
        self.db.execute("UPDATE nodes SET state=? WHERE node_id=?", (state, node_id))

    def record_heartbeat(self, node_id: str, state: str, tokens_per_s: float, holding_version: int | None) -> None:
        """What a node reports of itself; holding_version None: it holds no version yet."""
        self.db.execute("UPDATE nodes SET state=?, tokens_per_s=?, holding_version=? WHERE node_id=?",
                        (state, tokens_per_s, holding_version, node_id))

    def credit(self, node_id: str, amount: float, accepted: int = 0, rejected: int = 0, tokens: int = 0) -> float:
        self.db.execute(
            "UPDATE nodes SET credit=credit+?, rollouts_accepted=rollouts_accepted+?,"
            " rollouts_rejected=rollouts_rejected+?, tokens_generated=tokens_generated+? WHERE node_id=?",
            (amount, accepted, rejected, tokens, node_id))
        return self.db.execute("SELECT credit FROM nodes WHERE node_id=?", (node_id,)).fetchone()["credit"]

    # leases
    @staticmethod
    def _lease(row: sqlite3.Row | None) -> Lease | None:
        if row is None:
            return None
        return Lease(row["lease_id"], row["node_id"], row["kind"], row["version"], json.loads(row["spec"]),
                     row["created_ms"], row["deadline_ms"], row["state"])

    def add_lease(self, lease: Lease) -> None:
        self.db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (lease.lease_id, lease.node_id, lease.kind, lease.version, json.dumps(lease.spec),
                         lease.created_ms, lease.deadline_ms, lease.state))

    def lease(self, lease_id: str) -> Lease | None:
        return self._lease(self.db.execute("SELECT * FROM leases WHERE lease_id=?", (lease_id,)).fetchone())

    def active_leases(self, kind: str | None = None, node_id: str | None = None) -> list[Lease]:
        query, args = "SELECT * FROM leases WHERE state='active'", []
        if kind is not None:
            query, args = query + " AND kind=?", args + [kind]
        if node_id is not None:
            query, args = query + " AND node_id=?", args + [node_id]
        return [self._lease(r) for r in self.db.execute(query, args).fetchall()]

    def close_lease(self, lease_id: str, state: str) -> None:
        self.db.execute("UPDATE leases SET state=? WHERE lease_id=?", (state, lease_id))

    def expired_leases(self, t: int) -> list[Lease]:
        rows = self.db.execute("SELECT * FROM leases WHERE state='active' AND deadline_ms < ?", (t,)).fetchall()
        return [self._lease(r) for r in rows]

    # rollout groups
    def add_group(self, lease_id: str, node_id: str, version: int, task_id: int, prompt_ids: list[int],
                  rollouts: list[tuple[int, list[int], list[float], float, bool, bytes]], state: str) -> None:
        rewards = np.array([r[3] for r in rollouts], dtype=np.float64)
        cursor = self.db.execute(
            "INSERT INTO groups (lease_id, node_id, version, task_id, prompt_ids, reward_mean, reward_std,"
            " state, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (lease_id, node_id, version, task_id, pack_ints(prompt_ids), float(rewards.mean()),
             float(rewards.std()), state, now_ms()))
        self.db.executemany(
            "INSERT INTO rollouts (group_id, sample_index, completion_ids, logprobs, reward, finished, proofs)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(cursor.lastrowid, index, pack_ints(ids), pack_floats(lps), reward, int(finished), proofs)
             for index, ids, lps, reward, finished, proofs in rollouts])

    def pool_groups(self, min_version: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT group_id, version, reward_mean FROM groups WHERE state='pool'"
                               " AND version >= ? ORDER BY version, group_id", (min_version,)).fetchall()

    def set_groups_state(self, group_ids: list[int], state: str, train_lease: str | None = None) -> None:
        self.db.executemany("UPDATE groups SET state=?, train_lease=? WHERE group_id=?",
                            [(state, train_lease, g) for g in group_ids])

    def groups_of_train_lease(self, lease_id: str) -> list[int]:
        rows = self.db.execute("SELECT group_id FROM groups WHERE train_lease=?", (lease_id,)).fetchall()
        return [r["group_id"] for r in rows]

    def mark_stale(self, below_version: int) -> int:
        return self.db.execute("UPDATE groups SET state='stale' WHERE state='pool' AND version < ?",
                               (below_version,)).rowcount

    def training_samples(self, group_ids: list[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(group_ids))
        return self.db.execute(
            f"SELECT r.rollout_id, r.group_id, g.prompt_ids, r.completion_ids, r.logprobs, r.reward, g.version"
            f" FROM rollouts r JOIN groups g USING (group_id) WHERE g.group_id IN ({marks})"
            f" ORDER BY r.group_id, r.sample_index", group_ids).fetchall()

    def rewards_by_version(self) -> dict[int, tuple[float, int]]:
        """version -> (mean reward, rollouts) over every accepted training rollout it generated."""
        rows = self.db.execute(
            "SELECT g.version, AVG(r.reward) AS mean, COUNT(*) AS n FROM rollouts r JOIN groups g USING (group_id)"
            f" WHERE g.state IN ({','.join(repr(s) for s in ACCEPTED_GROUP_STATES)}) GROUP BY g.version").fetchall()
        return {r["version"]: (r["mean"], r["n"]) for r in rows}

    # versions
    def add_version(self, version: int, parent: int | None, sha256: str, size: int, manifest: str,
                    signature: bytes, trainer: str, rollouts_used: int) -> None:
        self.db.execute(
            "INSERT INTO versions (version, parent, sha256, size, manifest, signature, created_ms, trainer,"
            " rollouts_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (version, parent, sha256, size, manifest, signature, now_ms(), trainer, rollouts_used))

    def version(self, version: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM versions WHERE version=?", (version,)).fetchone()

    def versions(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM versions ORDER BY version").fetchall()

    def current_version(self) -> int:
        row = self.db.execute("SELECT MAX(version) AS v FROM versions").fetchone()
        return -1 if row["v"] is None else row["v"]

    def set_eval(self, version: int, accuracy: float) -> None:
        self.db.execute("UPDATE versions SET eval_accuracy=? WHERE version=?", (accuracy, version))

    # admin: bans and pause (issue 6)
    def ban(self, node_id: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO bans (node_id, reason, time_ms) VALUES (?, ?, ?)",
                        (node_id, reason, now_ms()))

    def unban(self, node_id: str) -> bool:
        return self.db.execute("DELETE FROM bans WHERE node_id=?", (node_id,)).rowcount == 1

    def banned(self, node_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM bans WHERE node_id=?", (node_id,)).fetchone() is not None

    def bans(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM bans ORDER BY time_ms").fetchall()

    def paused(self) -> bool:
        return self.get_meta("paused") == "1"

    def group_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM groups GROUP BY state").fetchall())

    def prompts_in_flight(self, kind: str) -> int:
        """Prompts leased and not yet answered, summed in SQL: the lease hot path parses no JSON."""
        return self.db.execute("SELECT COALESCE(SUM(json_array_length(spec, '$.task_ids')), 0) FROM leases"
                               " WHERE state='active' AND kind=?", (kind,)).fetchone()[0]

    def count_pool_groups(self, min_version: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM groups WHERE state='pool' AND version >= ?",
                               (min_version,)).fetchone()[0]

    def count_nodes_not_left(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM nodes WHERE state != 'left'").fetchone()[0]

    # verification (issue 3): submissions, verdicts, quarantine
    def add_submission(self, lease: Lease, state: str, verified: bool, tokens: int, rollouts: int) -> None:
        self.db.execute("INSERT INTO submissions (lease_id, node_id, kind, version, state, verified, tokens,"
                        " rollouts, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (lease.lease_id, lease.node_id, lease.kind, lease.version, state, int(verified), tokens,
                         rollouts, now_ms()))

    def submission(self, lease_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM submissions WHERE lease_id=?", (lease_id,)).fetchone()

    def unleased_pending_submissions(self, limit_tokens: int) -> list[sqlite3.Row]:
        """Pending submissions no validator holds, oldest first, up to limit_tokens generated tokens
        (at least one submission)."""
        rows = self.db.execute("SELECT * FROM submissions WHERE state='pending' AND verify_lease IS NULL"
                               " ORDER BY created_ms, lease_id").fetchall()
        chosen, total = [], 0
        for row in rows:
            if chosen and total + row["tokens"] > limit_tokens:
                break
            chosen.append(row)
            total += row["tokens"]
        return chosen

    def set_verify_lease(self, lease_ids: list[str], verify_lease: str | None) -> None:
        self.db.executemany("UPDATE submissions SET verify_lease=? WHERE lease_id=? AND state='pending'",
                            [(verify_lease, lease_id) for lease_id in lease_ids])

    def set_submission_state(self, lease_id: str, state: str, verified: bool) -> None:
        self.db.execute("UPDATE submissions SET state=?, verified=? WHERE lease_id=?",
                        (state, int(verified), lease_id))

    def submissions_of(self, node_id: str, states: tuple[str, ...]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self.db.execute(f"SELECT * FROM submissions WHERE node_id=? AND state IN ({marks})",
                               (node_id, *states)).fetchall()

    def pending_eval_versions(self) -> set[int]:
        rows = self.db.execute("SELECT version FROM submissions WHERE kind='eval' AND state='pending'").fetchall()
        return {r["version"] for r in rows}

    def groups_of_submission(self, lease_id: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM groups WHERE lease_id=? ORDER BY group_id", (lease_id,)).fetchall()

    def rollouts_of_groups(self, group_ids: list[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(group_ids))
        return self.db.execute(f"SELECT * FROM rollouts WHERE group_id IN ({marks}) ORDER BY group_id, sample_index",
                               group_ids).fetchall()

    def count_groups(self, state: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM groups WHERE state=?", (state,)).fetchone()[0]

    def count_pending_rollouts(self) -> int:
        return self.db.execute("SELECT COALESCE(SUM(rollouts), 0) FROM submissions WHERE state='pending'"
                               ).fetchone()[0]

    def add_verdict(self, lease_id: str, node_id: str, validator: str, accepted: bool, check: str, detail: str,
                    figures: dict[str, float]) -> None:
        self.db.execute("INSERT INTO verdicts (lease_id, node_id, validator, accepted, check_name, detail, figures,"
                        " time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (lease_id, node_id, validator, int(accepted), check, detail, json.dumps(figures), now_ms()))

    def recent_verdicts(self, limit: int) -> list[sqlite3.Row]:
        """The last `limit` verdicts and the last `limit` rejections (rare, and what a host looks for),
        oldest first."""
        query = ("SELECT v.*, s.kind, s.version, s.rollouts FROM verdicts v LEFT JOIN submissions s USING (lease_id)"
                 " WHERE v.accepted <= ? ORDER BY v.id DESC LIMIT ?")
        rows = {r["id"]: r for accepted in (1, 0) for r in self.db.execute(query, (accepted, limit)).fetchall()}
        return [rows[i] for i in sorted(rows)]

    def count_verified(self, node_id: str, ok: bool) -> None:
        column = "verified_ok" if ok else "verified_failed"
        self.db.execute(f"UPDATE nodes SET {column}={column}+1 WHERE node_id=?", (node_id,))

    def quarantine(self, node_id: str) -> None:
        self.db.execute("UPDATE nodes SET quarantined=1 WHERE node_id=?", (node_id,))

    # DiLoCo rounds
    def add_round(self, round_id: str, version: int, members: list[dict]) -> None:
        self.db.execute("INSERT INTO rounds (round_id, version, state, created_ms, members, group_ids)"
                        " VALUES (?, ?, 'forming', ?, ?, '[]')", (round_id, version, now_ms(), json.dumps(members)))

    def rounds(self, states: tuple[str, ...]) -> list[dict]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT * FROM rounds WHERE state IN ({marks}) ORDER BY created_ms", states)
        return [dict(r, members=json.loads(r["members"]), group_ids=json.loads(r["group_ids"])) for r in rows]

    def update_round(self, round_id: str, state: str, members: list[dict], group_ids: list[int],
                     outcome: str = "") -> None:
        self.db.execute("UPDATE rounds SET state=?, members=?, group_ids=?, outcome=? WHERE round_id=?",
                        (state, json.dumps(members), json.dumps(group_ids), outcome, round_id))

    def add_round_result(self, round_id: str, node_id: str, candidate: str, size: int, delta: str, samples: int,
                         averaged_with: list[str], delta_norm: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO round_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                        (round_id, node_id, candidate, size, delta, samples, json.dumps(averaged_with),
                         delta_norm, now_ms()))

    def latest_round(self) -> dict | None:
        """The newest round (rounds are only ever added), with how many members have submitted."""
        row = self.db.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM round_results x WHERE x.round_id=r.round_id) AS submitted"
            " FROM rounds r ORDER BY r.rowid DESC LIMIT 1").fetchone()
        return None if row is None else dict(row, members=json.loads(row["members"]))

    def round_results(self, round_id: str) -> list[dict]:
        rows = self.db.execute("SELECT * FROM round_results WHERE round_id=? ORDER BY created_ms", (round_id,))
        return [dict(r, averaged_with=json.loads(r["averaged_with"])) for r in rows]

    def set_verdict(self, round_id: str, node_id: str, verdict: str) -> None:
        self.db.execute("UPDATE round_results SET verdict=? WHERE round_id=? AND node_id=?",
                        (verdict, round_id, node_id))

    def accepted_delta_norms(self, limit: int) -> list[float]:
        rows = self.db.execute("SELECT delta_norm FROM round_results WHERE verdict='agreed'"
                               " ORDER BY created_ms DESC LIMIT ?", (limit,)).fetchall()
        return [r["delta_norm"] for r in rows]

    def rejected_trainer(self, node_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM round_results WHERE node_id=? AND verdict='rejected'",
                               (node_id,)).fetchone() is not None

    # events
    def event(self, kind: str, text: str) -> None:
        self.db.execute("INSERT INTO events (time_ms, kind, text) VALUES (?, ?, ?)", (now_ms(), kind, text))

    def recent_events(self, limit: int) -> list[sqlite3.Row]:
        rows = self.db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return rows[::-1]
