"""Benchmark of the rating core: ``python -m billing.bench_rating``.

Builds a seeded, realistic 50,000-prefix voice deck (prefixes of 3 to 8 digits grown from
country codes, a tenth of them with a second, future-dated version that takes over in the
middle of the month of traffic) and random calls whose numbers mostly match it, then prints
one ``BENCH {json}`` line per figure:

* ``rating_bulk_cdrs_per_s``: :meth:`BulkRater.rate_bulk` on 2,000,000 calls given as the
  bulk importer has them (list of number strings, int64 billsec, datetime64 start), median
  of 5 runs; building the deck and the BulkRater is excluded.
* ``rating_scalar_cdrs_per_s``: :func:`rate_one` in a Python loop over 100,000 calls.
* ``rating_quote_p99_ms``: p99 latency of one :func:`rate_one` over 10,000 calls.
* ``cdr_csv_parse_lines_per_s``: :func:`read_asterisk_master_columns` on 200,000 typical
  Master.csv lines (18 fields, about 250 bytes each) held in memory, median of 3 runs; the
  bulk import of a million-line file has to parse, rate and COPY in under 20 s.

Speed is measured here, never asserted by a test (see STYLE.md).
"""

from __future__ import annotations

import io
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from billing.csvformats import read_asterisk_master_columns
from billing.rating import BulkRater, Rate, RateDeck, rate_one

SEED = 20240601
DECK_PREFIXES = 50_000
BULK_CALLS = 2_000_000
SCALAR_CALLS = 100_000
LATENCY_CALLS = 10_000
PARSE_LINES = 200_000
RUNS = 5
TRAFFIC_START = datetime(2024, 6, 1, tzinfo=UTC)
TRAFFIC_DAYS = 30
INCREMENTS = [(60, 60), (30, 6), (1, 1), (6, 6)]


def bench(name: str, value: float, unit: str) -> None:
    """Print one benchmark figure in the format ``make bench`` collects."""
    print("BENCH " + json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def build_deck(rng: np.random.Generator) -> RateDeck:
    """A deck shaped like a wholesale A-Z deck: country codes refined into area and mobile prefixes."""
    country_codes = sorted({str(c) for c in rng.integers(1, 999, 300).tolist()})
    prefixes: set[str] = set()
    while len(prefixes) < DECK_PREFIXES:
        code = country_codes[int(rng.integers(len(country_codes)))]
        length = int(rng.integers(max(3, len(code)), 9))
        tail = "".join(str(d) for d in rng.integers(0, 10, length - len(code)).tolist())
        prefixes.add(code + tail)
    rates = []
    switch_over = TRAFFIC_START + timedelta(days=TRAFFIC_DAYS // 2)
    for position, prefix in enumerate(sorted(prefixes)):
        first, following = INCREMENTS[int(rng.integers(len(INCREMENTS)))]
        price = Decimal(int(rng.integers(1_000, 500_000))).scaleb(-6)
        common = {
            "prefix": prefix,
            "destination": f"Destination {prefix[:3]}-{position}",
            "connect_fee": Decimal("0.01") if rng.random() < 0.1 else Decimal(0),
            "first_increment": first,
            "next_increment": following,
            "min_charge": Decimal("0.02") if rng.random() < 0.05 else Decimal(0),
        }
        rates.append(Rate(rate=price, **common))
        if rng.random() < 0.1:
            rates.append(Rate(rate=price + Decimal("0.001"), effective_from=switch_over, **common))
    return RateDeck(rates)


def build_calls(rng: np.random.Generator, deck: RateDeck, count: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Random calls: 95% to numbers under a deck prefix, the rest to random 11-digit numbers."""
    prefixes = [r.prefix for r in deck.rates]
    picks = rng.integers(len(prefixes), size=count).tolist()
    lengths = rng.integers(11, 13, size=count).tolist()
    random_digits = rng.integers(10**11, 10**12, size=count).tolist()
    matching = (rng.random(count) < 0.95).tolist()
    numbers = []
    for pick, length, digits, match in zip(picks, lengths, random_digits, matching, strict=True):
        if match:
            prefix = prefixes[pick]
            numbers.append(prefix + str(digits)[: length - len(prefix)])
        else:
            numbers.append(str(digits)[:11])
    billsec = np.where(rng.random(count) < 0.2, 0, rng.integers(1, 600, size=count)).astype(np.int64)
    offsets = rng.integers(0, TRAFFIC_DAYS * 86_400, size=count)
    start = np.datetime64(TRAFFIC_START.replace(tzinfo=None), "s") + offsets.astype("timedelta64[s]")
    return numbers, billsec, start


def master_csv(numbers: list[str], billsec: np.ndarray, start: np.ndarray) -> str:
    """Master.csv lines as Asterisk's cdr_csv writes them (uniqueid and userfield logged)."""
    lines = []
    for position, (number, answered, moment) in enumerate(zip(numbers, billsec.tolist(), start.tolist(), strict=False)):
        stamp = moment.strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f'"acc{position % 50}","74951234567","{number}","from-internal","""Office"" <201>",'
            f'"PJSIP/201-{position:08x}","PJSIP/trunk-{position:08x}","Dial","PJSIP/{number}@trunk,60",'
            f'"{stamp}","{stamp}","{stamp}",{answered + 5},{answered},"ANSWERED","DOCUMENTATION",'
            f'"{1717200000 + position}.{position}",""\n'
        )
    return "".join(lines)


def main() -> None:
    """Run the three measurements and print their BENCH lines."""
    rng = np.random.default_rng(SEED)
    deck = build_deck(rng)
    numbers, billsec, start = build_calls(rng, deck, BULK_CALLS)
    rater = BulkRater(deck)

    timings = []
    for _ in range(RUNS):
        began = time.perf_counter()
        result = rater.rate_bulk(numbers, billsec, start, tz="UTC")
        timings.append(time.perf_counter() - began)
    rated = int((result.rate_index >= 0).sum())
    bench("rating_bulk_cdrs_per_s", round(BULK_CALLS / statistics.median(timings)), "cdr/s")

    moments = [datetime.fromtimestamp(int(s), UTC) for s in start[:SCALAR_CALLS].astype(np.int64).tolist()]
    seconds = billsec[:SCALAR_CALLS].tolist()
    began = time.perf_counter()
    for number, answered, moment in zip(numbers, seconds, moments, strict=False):
        rate_one(deck, number=number, seconds=answered, at=moment, tz="UTC")
    bench("rating_scalar_cdrs_per_s", round(SCALAR_CALLS / (time.perf_counter() - began)), "cdr/s")

    latencies = []
    for number, answered, moment in zip(numbers[:LATENCY_CALLS], seconds, moments, strict=False):
        began_ns = time.perf_counter_ns()
        rate_one(deck, number=number, seconds=answered, at=moment, tz="UTC")
        latencies.append(time.perf_counter_ns() - began_ns)
    p99_ms = float(np.percentile(np.array(latencies), 99)) / 1e6
    bench("rating_quote_p99_ms", round(p99_ms, 4), "ms")

    text = master_csv(numbers[:PARSE_LINES], billsec[:PARSE_LINES], start[:PARSE_LINES])
    parse_timings = []
    for _ in range(3):
        began = time.perf_counter()
        columns = read_asterisk_master_columns(io.StringIO(text, newline=""))
        parse_timings.append(time.perf_counter() - began)
    assert len(columns) == PARSE_LINES and not columns.errors
    bench("cdr_csv_parse_lines_per_s", round(PARSE_LINES / statistics.median(parse_timings)), "line/s")
    print(f"# deck {len(deck.rates)} rates, {BULK_CALLS} calls, {rated} rated, runs {[round(t, 3) for t in timings]}")


if __name__ == "__main__":
    main()
