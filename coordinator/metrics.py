"""Prometheus metrics for operators: RPC rates, latencies and refusals (by reason) from the service,
and the run's state (nodes by role and state, queue depths, rollouts, versions, verdicts by check,
bans, pause) read from SQLite at scrape time.

The scrape runs on prometheus-client's HTTP thread with its own read-only SQLite connection (WAL
lets it read beside the writer), so a scrape never touches the event loop's connection.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.v1 import coordinator_pb2 as pb


class RunCollector(Collector):
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def collect(self):
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            nodes = GaugeMetricFamily("potluck_nodes", "Registered nodes by role and state", labels=["role", "state"])
            for role, state, n in db.execute("SELECT role, state, COUNT(*) FROM nodes GROUP BY role, state"):
                nodes.add_metric([pb.Role.Name(role)[5:].lower(), state], n)
            yield nodes
            leases = GaugeMetricFamily("potluck_active_leases", "Active leases by kind", labels=["kind"])
            for kind, n in db.execute("SELECT kind, COUNT(*) FROM leases WHERE state='active' GROUP BY kind"):
                leases.add_metric([kind], n)
            yield leases
            groups = GaugeMetricFamily("potluck_rollout_groups", "Rollout groups by state (pool = queue depth)",
                                       labels=["state"])
            for state, n in db.execute("SELECT state, COUNT(*) FROM groups GROUP BY state"):
                groups.add_metric([state], n)
            yield groups
            accepted, rejected, tokens = db.execute(
                "SELECT COALESCE(SUM(rollouts_accepted), 0), COALESCE(SUM(rollouts_rejected), 0),"
                " COALESCE(SUM(tokens_generated), 0) FROM nodes").fetchone()
            yield GaugeMetricFamily("potluck_rollouts_accepted", "Rollouts accepted, all time", value=accepted)
            yield GaugeMetricFamily("potluck_rollouts_rejected", "Rollouts rejected, all time", value=rejected)
            yield GaugeMetricFamily("potluck_tokens_generated", "Accepted generated tokens, all time", value=tokens)
            version = db.execute("SELECT COALESCE(MAX(version), -1) FROM versions").fetchone()[0]
            yield GaugeMetricFamily("potluck_version", "Latest published version", value=version)
            yield from _admin_state(db)
            yield from _verdicts(db)
        finally:
            db.close()


def _admin_state(db: sqlite3.Connection):
    bans = db.execute("SELECT COUNT(*) FROM bans").fetchone()[0] if _has_table(db, "bans") else 0
    yield GaugeMetricFamily("potluck_banned_nodes", "Nodes banned by an admin", value=bans)
    paused = db.execute("SELECT value FROM meta WHERE key='paused'").fetchone()
    yield GaugeMetricFamily("potluck_paused", "1 while an admin has paused the run", value=int(bool(paused and paused[0] == "1")))


def _verdicts(db: sqlite3.Connection):
    """Validators' verdicts by outcome and by the check that decided them (issue 3's verdicts table)."""
    if not _has_table(db, "verdicts"):
        return
    verdicts = GaugeMetricFamily("potluck_verdicts", "Verdicts on rollout submissions, all time",
                                 labels=["result", "check"])
    for accepted, check, n in db.execute("SELECT accepted, check_name, COUNT(*) FROM verdicts"
                                         " GROUP BY accepted, check_name"):
        verdicts.add_metric(["accepted" if accepted else "rejected", check], n)
    yield verdicts


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("potluck_rpc_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=self.registry)
        self.refusals = Counter("potluck_rpc_refusals", "RPCs refused, by method and reason (potluck-reason)",
                                ["method", "reason"], registry=self.registry)
        self.latency = Histogram("potluck_rpc_latency_seconds", "Time to answer an RPC", ["method"],
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
        # The coordinator's egress for versions: nodes take versions from each other, this from it.
        self.version_bytes = Counter("potluck_version_bytes_served", "Version blob bytes sent by FetchVersion",
                                     registry=self.registry)

    def refused(self, method: str, reason: str) -> None:
        self.refusals.labels(method, reason).inc()

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, listen: str, db_path: Path) -> str:
        """Start the HTTP endpoint (port 0 picks one); returns HOST:PORT as bound."""
        self.registry.register(RunCollector(db_path))
        host, port = listen.rsplit(":", 1)
        server, _ = start_http_server(int(port), addr=host, registry=self.registry)
        return f"{host}:{server.server_port}"
