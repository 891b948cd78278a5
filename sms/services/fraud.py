"""Fraud limits: at most so many messages (or so much money) per period, per client and scope, counted in Redis.

Counters are fixed windows (the minute, hour or day since the epoch, UTC) keyed by limit, client and scope value
(destination mobile operator or sender id). A request reads the counters, admits its messages in order while each
stays within every limit, then adds what it admitted; if a concurrent request got in between and a counter went
over, the last of this request's messages on that counter are refused too, so a limit is never exceeded, only
(under a race) reached a little early. A request that fails afterwards (no credit, database error) takes its
increments back.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..choices import FraudMetric, FraudScope
from ..kv import key, kv
from ..selectors import ClientSpec, FraudLimitSpec

MICRO = Decimal(1_000_000)


@dataclass
class FraudOutcome:
    refused: dict[int, FraudLimitSpec] = field(default_factory=dict)  # position in the request -> limit
    increments: dict[str, int] = field(default_factory=dict)  # counter key -> what this request added
    hits: dict[tuple[int, str], FraudLimitSpec] = field(default_factory=dict)  # (limit id, scope value) -> limit

    def compensate(self) -> None:
        """Take back what this request added (it was not accepted after all)."""
        if self.increments:
            pipe = kv().pipeline(transaction=False)
            for counter, amount in self.increments.items():
                pipe.decrby(counter, amount)
            pipe.execute()
            self.increments.clear()


@dataclass(frozen=True, slots=True)
class FraudCandidate:
    position: int
    sender: str
    mobile_operator: str
    price: Decimal


def _scope_value(limit: FraudLimitSpec, candidate: FraudCandidate) -> str | None:
    if limit.scope == FraudScope.SENDER:
        return candidate.sender
    if limit.scope == FraudScope.DESTINATION_OPERATOR:
        operator = candidate.mobile_operator or "unknown"
        if limit.mobile_operator and limit.mobile_operator.casefold() != operator.casefold():
            return None
        return operator
    return "*"


def fraud_check(
    *,
    schema: str,
    client: ClientSpec,
    limits: tuple[FraudLimitSpec, ...],
    candidates: list[FraudCandidate],
    now: datetime,
) -> FraudOutcome:
    """Admit candidates within the client's fraud limits; the outcome says which were refused and by what limit."""
    outcome = FraudOutcome()
    applicable = [limit for limit in limits if limit.client_id in (None, client.client_id)]
    if not applicable or not candidates:
        return outcome
    epoch = now.timestamp()
    ceilings: dict[str, int] = {}
    counter_limit: dict[str, tuple[FraudLimitSpec, str]] = {}
    expiry: dict[str, int] = {}
    wants: list[list[tuple[str, int]]] = []  # per candidate: (counter, contribution)
    for candidate in candidates:
        own = []
        for limit in applicable:
            value = _scope_value(limit, candidate)
            if value is None:
                continue
            bucket = int(epoch // limit.period_s)
            counter = key(schema, "fraud", limit.id, client.client_id, value, bucket)
            if limit.metric == FraudMetric.AMOUNT:
                contribution, ceiling = int(candidate.price * MICRO), int(limit.limit * MICRO)
            else:
                contribution, ceiling = 1, int(limit.limit)
            ceilings[counter] = ceiling
            counter_limit[counter] = (limit, value)
            expiry[counter] = limit.period_s + 60
            own.append((counter, contribution))
        wants.append(own)

    counters = list(ceilings)
    current = {c: int(v or 0) for c, v in zip(counters, kv().mget(counters), strict=True)}
    pending: dict[str, int] = defaultdict(int)
    admitted: list[int] = []  # indexes into candidates
    for index, own in enumerate(wants):
        broken = next((c for c, add in own if current[c] + pending[c] + add > ceilings[c]), None)
        if broken is None:
            for c, add in own:
                pending[c] += add
            admitted.append(index)
        else:
            limit, value = counter_limit[broken]
            outcome.refused[candidates[index].position] = limit
            outcome.hits[(limit.id, value)] = limit

    added = {c: n for c, n in pending.items() if n}
    if added:
        pipe = kv().pipeline(transaction=False)
        for c, n in added.items():
            pipe.incrby(c, n)
            pipe.expire(c, expiry[c])
        totals = pipe.execute()[0::2]
        outcome.increments = dict(added)
        over = {c: total - ceilings[c] for c, total in zip(added, totals, strict=True) if total > ceilings[c]}
        if over:
            # A concurrent request took the room: give up this request's last messages on those counters.
            take_back: dict[str, int] = defaultdict(int)
            for index in reversed(admitted):
                own = wants[index]
                hit = next((c for c, add in own if over.get(c, 0) > 0), None)
                if hit is None:
                    continue
                for c, add in own:
                    take_back[c] += add
                    if c in over:
                        over[c] -= add
                limit, value = counter_limit[hit]
                outcome.refused[candidates[index].position] = limit
                outcome.hits[(limit.id, value)] = limit
            pipe = kv().pipeline(transaction=False)
            for c, n in take_back.items():
                pipe.decrby(c, n)
                outcome.increments[c] -= n
            pipe.execute()
    return outcome


def fraud_alert_once(
    *, schema: str, limit: FraudLimitSpec, client: ClientSpec, scope_value: str, now: datetime
) -> bool:
    """True the first time a limit is hit for a client and scope in its period: the operator is told once."""
    bucket = int(now.timestamp() // limit.period_s)
    return bool(
        kv().set(
            key(schema, "fraud-alert", limit.id, client.client_id, scope_value, bucket), 1, nx=True, ex=limit.period_s
        )
    )
