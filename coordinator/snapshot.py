"""The swarm as the Watch stream shows it."""
from __future__ import annotations

import time

from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .reputation import reputation
from .store import Store, now_ms

EVENTS_SHOWN = 50
VERDICTS_SHOWN = 50


class RateMeter:
    """Accepted rollouts per second over a sliding window, for the overview."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.samples: list[tuple[float, int]] = []

    def rate(self, total: int) -> float:
        t = time.monotonic()
        self.samples = [(ts, n) for ts, n in self.samples if t - ts <= self.window_s] + [(t, total)]
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def round_info(store: Store) -> pb.RoundInfo | None:
    """The newest DiLoCo round, for the overview's round progress."""
    row = store.latest_round()
    if row is None:
        return None
    return pb.RoundInfo(round_id=row["round_id"], version=row["version"], state=row["state"],
                        trainers=len(row["members"]), submitted=row["submitted"],
                        created_ms=row["created_ms"], outcome=row["outcome"])


def build_snapshot(ctx: RunContext, meter: RateMeter) -> pb.SwarmSnapshot:
    t = now_ms()
    online_ms = int(3 * ctx.config.heartbeat_seconds * 1000)
    nodes, tokens = [], 0
    for row in ctx.store.nodes():
        tokens += row["tokens_generated"]
        hardware = pb.Hardware()
        hardware.ParseFromString(row["hardware"])
        nodes.append(pb.NodeInfo(
            node_id=row["node_id"], name=row["name"], role=row["role"], state=row["state"], hardware=hardware,
            credit=row["credit"], last_seen_ms=row["last_seen_ms"], tokens_per_s=row["tokens_per_s"],
            rollouts_accepted=row["rollouts_accepted"], rollouts_rejected=row["rollouts_rejected"],
            online=row["state"] != "left" and t - row["last_seen_ms"] <= online_ms,
            quarantined=bool(row["quarantined"]),
            reputation=reputation(row["verified_ok"], row["verified_failed"], bool(row["quarantined"])),
            holding_version=row["holding_version"]))
    rewards = ctx.store.rewards_by_version()
    versions = [pb.VersionInfo(
        version=v["version"], sha256=v["sha256"], size=v["size"], created_ms=v["created_ms"],
        reward_mean=rewards.get(v["version"], (0.0, 0))[0], rollouts_generated=rewards.get(v["version"], (0.0, 0))[1],
        has_eval=v["eval_accuracy"] is not None, eval_accuracy=v["eval_accuracy"] or 0.0,
        rollouts_used=v["rollouts_used"], trainer=v["trainer"])
        for v in ctx.store.versions()]
    accepted = sum(n.rollouts_accepted for n in nodes)
    return pb.SwarmSnapshot(
        run_name=ctx.config.name, model=ctx.config.model.name, environment=ctx.config.environment.name,
        current_version=ctx.store.current_version(), versions=versions, nodes=nodes,
        rollouts_accepted=accepted, rollouts_rejected=sum(n.rollouts_rejected for n in nodes),
        tokens_generated=tokens,
        events=[pb.Event(id=e["id"], time_ms=e["time_ms"], kind=e["kind"], text=e["text"])
                for e in ctx.store.recent_events(EVENTS_SHOWN)],
        server_time_ms=t, rollouts_per_s=meter.rate(accepted),
        verdicts=[pb.VerdictInfo(id=v["id"], time_ms=v["time_ms"], node_id=v["node_id"], validator=v["validator"],
                                 accepted=bool(v["accepted"]), check=v["check_name"], detail=v["detail"],
                                 rollouts=v["rollouts"] or 0, kind=v["kind"] or "", version=v["version"] or 0)
                  for v in ctx.store.recent_verdicts(VERDICTS_SHOWN)],
        rollouts_pending=ctx.store.count_pending_rollouts(), trainers_per_round=ctx.config.diloco.trainers_per_round,
        round=round_info(ctx.store))
