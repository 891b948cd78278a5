"""Benchmark of the CDR import end to end: ``make bench`` (or ``python -m tests.bench billing.bench_ingest``).

On the bench database (``tests/bench.py`` gives each module one of its own): ``prepare_platform``, one operator,
a 50,000-prefix retail deck (the one ``billing.bench_rating`` builds) as 50 accounts' price tariff, the same
prefixes at supplier prices as the default cost tariff and trunk ``trunk``'s, then a generated 1,000,000-line
Asterisk ``Master.csv`` on disk (18 fields, about 250 bytes a line; 95% of the numbers under a deck prefix). Then:

* ``import_cdrs_1m_s``: wall time of ``python manage.py import_cdrs --format asterisk FILE`` in a process of its
  own (Django start-up, reading the decks, parsing, rating price and cost, COPY of the CDRs, the ledger charges
  and balances, all committed), the file being new to the database;
* ``import_cdrs_rows_per_s``: 1,000,000 / that time;
* ``import_cdrs_1m_reimport_s``: the same file imported again (everything is a duplicate: nothing is stored or
  charged twice).

After each import it checks, and fails loudly otherwise, that every line is stored once, that each account's
balance equals the sum of its ledger entries and the sum of its CDRs' prices. Speed is measured here, never
asserted by a test (see STYLE.md).
"""

import os
import sys

if os.environ.get("OPENCARRIER_BENCH") != "1":
    sys.exit("Run it through `make bench`: it writes a million CDRs to the database the runner makes.")

import django  # noqa: E402

django.setup()

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count, Sum  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from billing.bench_rating import SEED, build_calls, build_deck, master_csv  # noqa: E402
from billing.models import Account, Cdr, LedgerEntry, Rate, Tariff, Trunk  # noqa: E402
from tenants.services import operator_provision  # noqa: E402

LINES = 1_000_000
ACCOUNTS = 50
OPERATOR = "benchcdr"
BASE_DIR = Path(__file__).resolve().parent.parent


def bench(name: str, value: float, unit: str) -> None:
    """Print one benchmark figure in the format ``make bench`` collects."""
    print("BENCH " + json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def tariffs_load(deck) -> None:
    """The retail deck as 50 accounts' tariff; the same prefixes at 60% as the default and trunk cost tariff."""
    retail = Tariff.objects.create(name="Retail", currency="EUR")
    wholesale = Tariff.objects.create(name="Wholesale", kind="cost", currency="EUR", is_default_cost=True)
    fields = ("prefix", "destination", "rate", "connect_fee", "first_increment", "next_increment", "min_charge")
    rows = []
    for rate in deck.rates:
        values = {name: getattr(rate, name) for name in fields}
        rows.append(Rate(tariff=retail, effective_from=rate.effective_from, **values))
        if rate.effective_from is None:
            cost = (rate.rate * Decimal("0.6")).quantize(Decimal("0.000001"))
            rows.append(Rate(tariff=wholesale, **{**values, "rate": cost, "connect_fee": 0, "min_charge": 0}))
    Rate.objects.bulk_create(rows, batch_size=10_000)
    Trunk.objects.create(name="trunk", cost_tariff=wholesale)
    for number in range(ACCOUNTS):
        Account.objects.create(name=f"Customer {number}", code=f"acc{number}", currency="EUR", tariff=retail)


def master_file(path: Path, rng: np.random.Generator, deck) -> None:
    """1,000,000 Master.csv lines written in slices (the generator builds them in memory)."""
    with path.open("w", encoding="utf-8", newline="") as out:
        for begin in range(0, LINES, 200_000):
            numbers, billsec, start = build_calls(rng, deck, 200_000)
            text = master_csv(numbers, billsec, start)
            # Unique ids across slices: master_csv numbers lines from 0 in each call.
            out.write(text.replace('"DOCUMENTATION","1717', f'"DOCUMENTATION","{begin // 200_000}-1717'))


def import_run(path: Path) -> tuple[float, dict]:
    """Wall time of the real command in a process of its own, and its JSON summary."""
    command = [sys.executable, "manage.py", "import_cdrs", "--operator", OPERATOR, "--format", "asterisk", str(path)]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=BASE_DIR, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"import_cdrs failed:\n{done.stderr[-4000:]}")
    return elapsed, json.loads(done.stdout)


def books_check() -> None:
    """Every line stored once; balance = sum of entries = - sum of CDR prices, for every account."""
    with schema_context(OPERATOR):
        stored = Cdr.objects.count()
        assert stored == LINES, f"{stored} CDRs stored for {LINES} lines"
        entries = dict(LedgerEntry.objects.values_list("account").annotate(s=Sum("amount")))
        prices = dict(Cdr.objects.filter(status="rated").values_list("account").annotate(s=Sum("price")))
        for account in Account.objects.all():
            total = entries.get(account.pk, Decimal(0))
            assert account.balance == total == -prices.get(account.pk, Decimal(0)), account.code
        unrated = dict(Cdr.objects.values_list("status").annotate(n=Count("id")))
        costed = Cdr.objects.filter(cost__isnull=False).count()
    note(f"stored {stored} CDRs {unrated}, {costed} with a cost; balances = entries = prices for {ACCOUNTS} accounts")


def main() -> None:
    call_command("prepare_platform", verbosity=0)
    operator_provision(
        slug=OPERATOR, name="CDR bench", domain="benchcdr.localhost", admin_email="a@benchcdr.localhost",
        send_welcome=False,
    )  # fmt: skip
    rng = np.random.default_rng(SEED)
    deck = build_deck(rng)
    with schema_context(OPERATOR):
        tariffs_load(deck)
    connection.close()
    with tempfile.TemporaryDirectory(prefix="bench-cdrs-") as folder:
        path = Path(folder) / "Master.csv"
        began = time.perf_counter()
        master_file(path, rng, deck)
        note(f"wrote {LINES} lines, {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - began:.1f} s")

        elapsed, summary = import_run(path)
        note(f"first import: {elapsed:.2f} s; {json.dumps({k: v for k, v in summary.items() if k != 'rejected'})}")
        assert summary["imported"] == LINES and not summary["rejected"], summary
        books_check()
        bench("import_cdrs_1m_s", round(elapsed, 2), "s")
        bench("import_cdrs_rows_per_s", round(LINES / elapsed), "row/s")

        elapsed, summary = import_run(path)
        assert summary["imported"] == 0 and summary["duplicates"] == LINES, summary
        books_check()
        bench("import_cdrs_1m_reimport_s", round(elapsed, 2), "s")


if __name__ == "__main__":
    main()
