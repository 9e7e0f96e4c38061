"""Prometheus metrics for operators: RPC rates and latencies from the service, and the run's state
(nodes by role and state, queue depths, rollouts, versions) read from SQLite at scrape time.

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
        finally:
            db.close()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("potluck_rpc_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("potluck_rpc_latency_seconds", "Time to answer an RPC", ["method"],
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, listen: str, db_path: Path) -> str:
        """Start the HTTP endpoint (port 0 picks one); returns HOST:PORT as bound."""
        self.registry.register(RunCollector(db_path))
        host, port = listen.rsplit(":", 1)
        server, _ = start_http_server(int(port), addr=host, registry=self.registry)
        return f"{host}:{server.server_port}"
