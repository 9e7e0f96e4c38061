"""Admission: the run's join token, and who may take the trainer and validator roles."""
from __future__ import annotations

import hashlib
import hmac

from protocol.config import AdmissionConfig
from protocol.v1 import coordinator_pb2 as pb

from .errors import denied, unauthenticated


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(rules: AdmissionConfig, token: str) -> None:
    if rules.join_token_sha256 is None:
        return
    if not token:
        raise unauthenticated("bad_join_token", "this run requires a join token (potluck node join --join-token)")
    if not hmac.compare_digest(token_hash(token), rules.join_token_sha256):
        raise unauthenticated("bad_join_token", "the join token is not this run's")


def role_allowed(rules: AdmissionConfig, role: int, node_id: str, credit: float) -> bool:
    """Listed nodes, or nodes with the credit threshold. A trainer role with neither is open to all;
    the validator role never is: a validator's verdicts are trusted, so the host names who judges."""
    if role == pb.ROLE_TRAINER:
        listed, threshold = rules.trainers, rules.trainer_min_credit
    elif role == pb.ROLE_VALIDATOR:
        listed, threshold = rules.validators, rules.validator_min_credit
    else:
        return True
    if not listed and threshold == 0:
        return role == pb.ROLE_TRAINER
    return node_id in listed or (threshold > 0 and credit >= threshold)


def check_role(rules: AdmissionConfig, role: int, node_id: str, credit: float) -> None:
    if not role_allowed(rules, role, node_id, credit):
        name = pb.Role.Name(role)[5:].lower()
        raise denied("not_allowed", f"node {node_id} may not take the {name} role here: it is not on the "
                                    f"run's {name} allowlist and has {credit:g} credit of the required "
                                    f"{getattr(rules, name + '_min_credit'):g}")
