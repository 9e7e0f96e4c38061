"""What a request may be: body size per RPC, and field rules that hold for every message, so an RPC
added later gets them without a line here (a default cap, the generic field walk).

Field rules, applied to a parsed body and everything nested in it:
- strings: at most STRING_CAPS[name] (else DEFAULT_STRING) characters; any field whose name holds
  "addr" (addr, addrs, multiaddrs, p2p_addr, ...) must parse as a multiaddr;
- floats and doubles: finite; RANGES bounds some of them; durations (`*_seconds`) are >= 0;
- enums: a value the schema names (proto3 would otherwise carry unknown numbers through);
- 64-bit integers: below 2**63, so they fit SQLite's signed INTEGER.
"""
from __future__ import annotations

import contextlib
import math

import multiaddr
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from protocol.signing import nonce_skew_s

from .errors import exhausted, invalid, unauthenticated

KIB, MIB = 1 << 10, 1 << 20
# Signed bodies, by RPC. Everything but SubmitTraining stays far under the 16 MiB transport cap.
BODY_CAPS = {
    "Register": 16 * KIB,
    "Heartbeat": 4 * KIB,
    "LeaseRollouts": 1 * KIB,
    "SubmitRollouts": 8 * MIB,
    "LeaseTraining": 4 * KIB,
    "SubmitTraining": 16 * MIB,
    "ReturnLeases": 4 * KIB,
    "FindPeers": 4 * KIB,
}
DEFAULT_BODY_CAP = 1 * MIB
DEFAULT_STRING = 256
STRING_CAPS = {"name": 64, "state": 32, "software_version": 64, "lease_id": 64, "node_id": 64,
               "join_token": 128, "sha256": 64, "device": 32}
RANGES = {"tokens_per_s": (0.0, 1e9), "max_prompts": (0, 4096), "mean_loss": (-1e9, 1e9)}
MAX_ADDRS = 32
MAX_INT64 = 2**63 - 1


def body_cap(method: str) -> int:
    return BODY_CAPS.get(method, DEFAULT_BODY_CAP)


def training_body_cap(version_bytes: int) -> int:
    """SubmitTraining carries a candidate version and a pseudo-gradient, each no larger than version 0
    (same tensors): 16 MiB, or two versions' worth where versions are larger (full-parameter runs)."""
    return max(BODY_CAPS["SubmitTraining"], 2 * version_bytes + MIB)


def check_body_size(method: str, body: bytes, cap: int | None = None) -> None:
    cap = cap or body_cap(method)
    if len(body) > cap:
        raise exhausted("too_large", f"{method} body is {len(body)} bytes; the limit is {cap}")


def check_nonce_time(nonce: int, window_s: float) -> None:
    """A NonceClock nonce is wall-clock microseconds: refuse one too far from the server's clock."""
    skew = nonce_skew_s(nonce)
    if abs(skew) > window_s:
        raise unauthenticated("stale_timestamp", f"the nonce's time is {skew:+.0f}s from the coordinator's "
                                                 f"clock; the window is ±{window_s:g}s (check this machine's clock)")


def parse_body(method: str, raw: bytes, body_type: type[Message]) -> Message:
    """The signed body, parsed and checked field by field."""
    body = body_type()
    try:
        body.ParseFromString(raw)
    except DecodeError as exc:
        raise invalid("malformed_body", f"{method} body does not parse as {body_type.__name__}: {exc}") from None
    check_fields(body)
    return body


def _check_multiaddr(where: str, value: str) -> None:
    try:
        multiaddr.Multiaddr(value)
    except Exception as exc:  # the package raises several types (StringParseError, ValueError, ...)
        raise invalid("bad_multiaddr", f"{where} is not a multiaddr: {str(exc)[:120]}") from None
    if not value:
        raise invalid("bad_multiaddr", f"{where} is empty")


def _check_scalar(where: str, field: FieldDescriptor, value) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        cap = STRING_CAPS.get(field.name, DEFAULT_STRING)
        if len(value) > cap:
            raise invalid("too_long", f"{where} has {len(value)} characters; the limit is {cap}")
        if "addr" in field.name:
            _check_multiaddr(where, value)
    elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if not math.isfinite(value):
            raise invalid("not_finite", f"{where} is {value}")
        if field.name.endswith("_seconds") and value < 0:
            raise invalid("out_of_range", f"{where} is negative ({value})")
    elif kind == FieldDescriptor.TYPE_ENUM and field.enum_type.values_by_number.get(value) is None:
        raise invalid("bad_enum", f"{where} = {value} is not a {field.enum_type.name}")
    elif kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64) and value > MAX_INT64:
        raise invalid("out_of_range", f"{where} = {value} is larger than {MAX_INT64}")
    bounds = RANGES.get(field.name)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise invalid("out_of_range", f"{where} = {value} is outside [{bounds[0]}, {bounds[1]}]")


def check_fields(message: Message, path: str = "") -> None:
    """Raise INVALID_ARGUMENT for the first field that breaks a rule, naming it."""
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for key, item in value.items():
                _check_scalar(f"{where} key", key_field, key)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    check_fields(item, f"{where}[{key!r}].")
                else:
                    _check_scalar(f"{where}[{key!r}]", value_field, item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for i, item in enumerate(value if repeated else [value]):
                check_fields(item, f"{where}[{i}]." if repeated else f"{where}.")
        elif repeated:
            if "addr" in field.name and len(value) > MAX_ADDRS:
                raise invalid("too_many", f"{where} has {len(value)} addresses; the limit is {MAX_ADDRS}")
            if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT) and \
                    not all(map(math.isfinite, value)):
                raise invalid("not_finite", f"{where} holds a value that is not finite")
            if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64) and max(value) > MAX_INT64:
                raise invalid("out_of_range", f"{where} holds a value larger than {MAX_INT64}")
            if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM):
                for i, item in enumerate(value):
                    _check_scalar(f"{where}[{i}]", field, item)
        else:
            _check_scalar(where, field, value)


class StreamGate:
    """A cap on concurrent server streams (Watch, FetchVersion): past it, RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0

    @contextlib.contextmanager
    def admit(self, method: str):
        if self.open >= self.limit:
            raise exhausted("too_many_streams", f"{method}: {self.open} streams are open, the limit is "
                                                f"{self.limit}; retry later")
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

