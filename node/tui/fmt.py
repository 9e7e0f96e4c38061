"""How swarm values read on screen: short ids, sizes, ages, hardware in a few characters."""
from __future__ import annotations

from datetime import datetime, timezone

from protocol.v1 import coordinator_pb2 as pb

SHORT_ID = 8  # the coordinator's own log lines name nodes by their last 8 characters


def short_id(node_id: str) -> str:
    return node_id[-SHORT_ID:]


def role_name(role: int) -> str:
    return "auto" if role == pb.ROLE_UNSPECIFIED else pb.Role.Name(role).removeprefix("ROLE_").lower()


def node_state(node: pb.NodeInfo) -> str:
    # A quarantined node may still heartbeat its worker's state; being quarantined is what matters.
    return "quarantined" if node.quarantined else node.state


def node_ref(node_id: str, nodes: dict[str, pb.NodeInfo]) -> str:
    """A node by name and short id; anything else (the coordinator, as trainer of version 0 or as
    validator) as it is."""
    node = nodes.get(node_id)
    if node is None:
        return short_id(node_id) if len(node_id) > 2 * SHORT_ID else node_id
    return f"{node.name} ({short_id(node_id)})" if node.name else short_id(node_id)


def gib(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 30):.0f}G"


def size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def age(ms: int) -> str:
    """A duration in the largest unit that keeps it short: 42s, 7m, 3h, 12d."""
    s = max(ms, 0) // 1000
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= span:
            return f"{s // span}{unit}"
    return f"{s}s"


def clock_time(ms: int) -> str:
    # UTC: the coordinator and its viewers may sit in different time zones.
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def hms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M:%S")


def hardware(hw: pb.Hardware) -> str:
    """One column's worth: `cpu 8c 32G`, or for a GPU host `2×RTX 4090 24G 16c` (the GPU implies cuda)."""
    if not hw.gpus:
        return f"{hw.device or '?'} {hw.cpu_count}c {gib(hw.ram_bytes)}"
    names = {gpu_name(g.name) for g in hw.gpus}
    name = names.pop() if len(names) == 1 else "mixed"
    return f"{len(hw.gpus)}×{name} {gib(max(g.memory_bytes for g in hw.gpus))} {hw.cpu_count}c"


_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "amd", "radeon", "instinct"}


def gpu_name(name: str) -> str:
    """The model in a GPU's marketing name: `NVIDIA H100 80GB HBM3` → `H100`, `NVIDIA RTX 4090` → `RTX 4090`."""
    words = [w for w in name.replace("-", " ").split() if w.lower() not in _VENDOR_WORDS]
    return " ".join(words[:2] if words[:1] in (["RTX"], ["GTX"]) else words[:1]) or "gpu"


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def percent(fraction: float | None) -> str:
    if fraction is None:
        return "—"
    # Rounding must not hide the odd rejection (or acceptance): 99.97% is not 100%.
    if 0.999 <= fraction < 1:
        return ">99.9%"
    if 0 < fraction < 0.001:
        return "<0.1%"
    return f"{100 * fraction:.1f}%"


def clip(text: str, width: int) -> str:
    """At most width characters; a cut shows as a trailing ellipsis."""
    if len(text) <= width:
        return text
    return text[:width - 1] + "…" if width > 0 else ""


NAME_SHOWN = 16


def node_label(node: pb.NodeInfo) -> str:
    """A node as a table names it: its name, or its short id when it has none."""
    return clip(node.name or short_id(node.node_id), NAME_SHOWN)
