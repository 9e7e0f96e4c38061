"""Who is online in which role: read from the store at most once per max_age and shared by every
call that asks, with the coordinator's own changes (a registration, a move) applied at once.

roles.py asks on every heartbeat and lease of a `--role auto` node; reading all nodes each time
would cost O(nodes) per call, O(nodes²) per heartbeat interval. What the shared view misses, for at
most its age, is a node going silent, coming back, leaving or being quarantined: within the online
window's own slack (a few heartbeat intervals). A registration or a move it never misses, so two
nodes are never both moved into the one trainer place a round lacks.
"""
from __future__ import annotations

import time
from collections import Counter


class OnlineRoles:
    def __init__(self, roles: dict[str, int], max_age_s: float) -> None:
        self.roles = roles  # node id -> role
        self.counts = Counter(roles.values())
        self.expires = time.monotonic() + max_age_s

    @property
    def stale(self) -> bool:
        return time.monotonic() >= self.expires

    def set(self, node_id: str, role: int) -> None:
        """The node registered or was moved: online, in role, from now on."""
        old = self.roles.get(node_id)
        if old is not None:
            self.counts[old] -= 1
        self.roles[node_id] = role
        self.counts[role] += 1

    def counts_excluding(self, node_id: str) -> dict[int, int]:
        """Online nodes by role, the node itself not counted."""
        counts = dict(self.counts)
        if node_id in self.roles:
            counts[self.roles[node_id]] -= 1
        return counts
