"""The fast Master.csv reader (pyarrow on blocks of whole lines, the csv module where it cannot be sure) and what the
bulk import builds on it: the same records, errors and line numbers as the streaming parser, on real files; the
COPY rows (CSV) store any text exactly; the compiled deck shared between processes never outlives its rates."""

import io
from decimal import Decimal

import numpy as np
import pytest
from django.db.models import Sum

from billing import csvformats
from billing.csvformats import (
    LineError,
    ParsedCdr,
    asterisk_trunk,
    iter_asterisk_master_columns,
    parse_asterisk_master_csv,
    read_asterisk_master_columns,
)
from billing.models import Account, Cdr, Rate
from billing.selectors import decks
from billing.services import account_create, cdrs_import_bulk, cdrs_ingest
from billing.tests.engine_support import master_line, tariff_with_deck

D = Decimal

GOOD = master_line("u1", "34911234567", "2024-01-15 10:00:00", 180)
# Asterisk quotes text and doubles quotes inside it; commas inside quotes are data.
QUOTED = (
    '"acme,ltd","1001","34911234567","from-internal","""Alice, ""the boss"""" <1001>","SIP/1001-01",'
    '"SIP/carrier1-0002","Dial","SIP/trunk/34911234567,60","2024-01-15 11:00:00","","",65,60,"ANSWERED",'
    '"DOCUMENTATION","u2",""\n'
)
EMPTY_FIELDS = '"","","34911234567","","","","","","","2024-01-15 12:00:00","","",5,0,"NO ANSWER","","u3",""\n'
MULTIBYTE = master_line("u4", "34911234567", "2024-01-15 13:00:00", 30, account="bücher-日本")
BAD_TIME = master_line("u5", "34911234567", "15/01/2024 14:00", 30)
SHORT = '"acme","1001","34911234567"\n'
NO_UNIQUEID = (
    '"acme","1002","442071234567","from-internal","","SIP/1002-04","SIP/trunk-05","Dial","",'
    '"2024-03-31 02:30:00","2024-03-31 02:30:10","2024-03-31 02:31:10",70,60,"ANSWERED","BILLING"\n'
)
TRICKY = [GOOD, QUOTED, EMPTY_FIELDS, MULTIBYTE, BAD_TIME, SHORT, NO_UNIQUEID]


def many(count: int, start: int = 0) -> list[str]:
    return [
        master_line(f"m{n}", f"3491{n:07d}", f"2024-02-{1 + n % 28:02d} {n % 24:02d}:10:00", n % 400, src=f"{n}")
        for n in range(start, start + count)
    ]


def write(tmp_path, lines: list[str], *, newline: str = "\n", bom: bool = False):
    path = tmp_path / "Master.csv"
    text = "".join(lines).replace("\n", newline)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.fixture
def verdicts(monkeypatch):
    """How each block was read: "clean" (pyarrow), "alone" (the csv module, that block) or "rest" (the csv module,
    to the end). Observed, not changed."""
    seen: list[str] = []
    check = csvformats._block_check

    def observed(block, zone):
        result = check(block, zone)
        seen.append(result.verdict)
        return result

    monkeypatch.setattr(csvformats, "_block_check", observed)
    return seen


def assert_same_as_streaming(columns, text: str, tz: str = "UTC") -> None:
    """The columns hold exactly what the record-by-record parser gives for the same text."""
    streamed = list(parse_asterisk_master_csv(io.StringIO(text, newline=""), tz=tz))
    cdrs = [r for r in streamed if isinstance(r, ParsedCdr)]
    assert columns.errors == [r for r in streamed if isinstance(r, LineError)]
    assert columns.line.tolist() == [c.line for c in cdrs]
    assert columns.source_id == [c.source_id for c in cdrs]
    assert columns.account == [c.account for c in cdrs]
    assert columns.caller == [c.caller for c in cdrs] and columns.callee == [c.callee for c in cdrs]
    assert columns.start.tolist() == [c.start.replace(tzinfo=None) for c in cdrs]
    assert columns.duration.tolist() == [c.duration for c in cdrs]
    assert columns.billsec.tolist() == [c.billsec for c in cdrs]
    assert columns.disposition == [c.disposition for c in cdrs]
    assert columns.trunk == [c.trunk for c in cdrs]


def read_file(path, tz: str = "UTC", **options):
    with path.open(encoding="utf-8-sig", newline="") as source:  # as import_cdrs opens it
        return read_asterisk_master_columns(source, tz=tz, **options)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_clean_file_is_read_by_pyarrow_exactly_as_the_csv_module_reads_it(tmp_path, verdicts, newline):
    lines = [GOOD, QUOTED, EMPTY_FIELDS, MULTIBYTE, *many(50)]
    path = write(tmp_path, lines, newline=newline, bom=True)
    columns = read_file(path, tz="Europe/Madrid")
    assert verdicts == ["clean"]
    assert_same_as_streaming(columns, "".join(lines).replace("\n", newline), tz="Europe/Madrid")
    assert columns.account[:4] == ["acme", "acme,ltd", "", "bücher-日本"]
    assert columns.caller[2] == "" and columns.trunk[:3] == ["carrier1", "carrier1", ""]


def test_a_bad_line_in_the_middle_is_reported_by_its_line_and_the_rest_still_read_fast(tmp_path, verdicts):
    lines = [*many(30), BAD_TIME, SHORT, "\n", *many(30, start=30), *many(40, start=60)]
    path = write(tmp_path, lines)
    with path.open(encoding="utf-8-sig", newline="") as source:
        batches = list(iter_asterisk_master_columns(source, batch_rows=30))
    # Blocks of 30 lines: the one with the bad lines is read by the csv module alone, the others by pyarrow.
    assert verdicts[:2] == ["clean", "alone"] and set(verdicts[2:]) == {"clean"}
    columns = csvformats._concat(batches)
    assert_same_as_streaming(columns, "".join(lines))
    assert [(e.line, e.column) for e in columns.errors] == [(31, "start"), (32, None)]
    assert len(columns) == 100 and all(len(b) >= 30 for b in batches[:-1])


def test_a_record_over_two_lines_hands_the_rest_of_the_file_to_the_csv_module(tmp_path, verdicts):
    over_two_lines = GOOD.replace('"Dial"', '"Dial\nagain"').replace('"u1"', '"u-two-lines"')
    lines = [*many(20), over_two_lines, *many(45, start=20)]
    path = write(tmp_path, lines)
    columns = read_file(path, chunk_rows=7)
    assert "rest" in verdicts
    assert_same_as_streaming(columns, "".join(lines))
    assert columns.line.tolist()[19:22] == [20, 21, 23]  # the record of lines 21-22 is found where it starts


@pytest.mark.parametrize("trap", ["lone carriage return", "open quote at a block's end", "huge field"])
def test_what_pyarrow_cannot_be_sure_of_is_read_by_the_csv_module_with_the_same_result(tmp_path, verdicts, trap):
    lines = many(25)
    if trap == "lone carriage return":
        lines[10] = lines[10].replace('"Dial"', '"Di\ral"')
    elif trap == "open quote at a block's end":
        lines[24] = lines[24].replace('"DOCUMENTATION"', '"DOCUMENTATION')
    else:
        lines[5] = lines[5].replace('"Dial"', '"' + "x" * 200_000 + '"')
    lines += many(10, start=25)
    path = write(tmp_path, lines)
    with path.open(encoding="utf-8-sig", newline="") as source:
        batches = list(iter_asterisk_master_columns(source, batch_rows=25))
    assert_same_as_streaming(csvformats._concat(batches), "".join(lines))
    # the block holding the trap went to the csv module: alone (a huge field), or with the rest of the file
    assert verdicts[0] == {"lone carriage return": "rest", "open quote at a block's end": "rest"}.get(trap, "alone")


def test_records_without_a_uniqueid_get_the_line_hash_the_streaming_parser_gives(tmp_path, verdicts):
    lines = [NO_UNIQUEID.replace("70,60", f"{70 + n},{60 + n}") for n in range(12)]
    path = write(tmp_path, lines)
    columns = read_file(path)
    assert verdicts == ["clean"]
    assert_same_as_streaming(columns, "".join(lines))
    assert all(s.startswith("h") for s in columns.source_id) and len(set(columns.source_id)) == 12


def test_text_bytes_and_a_file_give_the_same_columns(tmp_path):
    lines = TRICKY + many(20)
    text = "".join(lines)
    path = write(tmp_path, lines)
    from_file = read_file(path)
    for other in (read_asterisk_master_columns(text), read_asterisk_master_columns(text.encode())):
        assert other.source_id == from_file.source_id and other.errors == from_file.errors
        assert other.trunk == from_file.trunk and other.start.tolist() == from_file.start.tolist()
    assert_same_as_streaming(from_file, text)


CHANNELS = [
    "SIP/carrier1-00000a1b",
    "PJSIP/car-rier-0001",
    "Local/1@x-1;2",
    "LOCAL/abc-1",
    "",
    "DAHDI/1-1",
    "  SIP/spaced-1\t",
    "nochannel",
    "/x-1",
    "SIP/nodash",
    "SIP/ends-",
    "SIP/é-ü-1",
    "SIP/" + "a" * 100 + "-1",  # a name over 80 characters is cut
    "\x1fSIP/x-1\x85",  # str.strip() strips these too
]


def test_the_vectorised_trunk_is_asterisk_trunk_value_by_value():
    import pyarrow as pa

    names = csvformats._arrow_trunks(pa.array(CHANNELS[:-2] + CHANNELS[-1:]))
    assert names.to_pylist() == [asterisk_trunk(c) for c in CHANNELS[:-2] + CHANNELS[-1:]]
    assert csvformats._arrow_trunks(pa.array(CHANNELS)) is None  # over 80: cut by asterisk_trunk itself
    path_lines = [GOOD.replace("SIP/carrier1-00000a1b", channel) for channel in CHANNELS]
    columns = read_asterisk_master_columns("".join(path_lines))
    assert columns.trunk == [asterisk_trunk(c) for c in CHANNELS]


def test_a_wrong_number_in_a_clean_block_is_worded_like_the_row_parser_does(tmp_path):
    lines = [*many(5), GOOD.replace("185,180", "185,99999999999"), GOOD.replace('"34911234567"', '" "')]
    path = write(tmp_path, lines)
    columns = read_file(path)
    assert_same_as_streaming(columns, "".join(lines))
    assert [e.column for e in columns.errors] == ["billsec", "dst"]
    assert columns.start.dtype == np.dtype("datetime64[s]")


# --- through the database ------------------------------------------------------------------------------------------

RETAIL = "34,Spain,0.020,0.010,30/6,,,,\n3491,Madrid,0.011,,60/60,,,,\n"


def world():
    retail = tariff_with_deck("Retail", RETAIL)
    for code in ("acme", "acme,ltd", "bücher-日本"):
        account_create(name=code, code=code, currency="EUR", tariff=retail)
    return retail


@pytest.mark.django_db
def test_a_real_file_with_every_trap_is_stored_as_the_exact_path_stores_it(in_schema, tmp_path):
    # Text that CSV or COPY could get wrong: quotes, commas, a tab, a backslash, multibyte accountcode, CRLF.
    odd_caller = master_line(
        "u6", "34911234567", "2024-01-15 15:00:00", 42, src='a\\b\t""c"",d'
    )  # quotes doubled, as in CSV
    lines = [*TRICKY, odd_caller, *many(30)]
    path = write(tmp_path, lines, newline="\r\n")
    fields = (
        *("source_id", "account_code", "account_id", "caller", "callee", "start", "price", "status", "unrated_reason"),
        *("matched_prefix", "destination", "trunk", "extra", "currency", "correlation_id"),
    )
    with in_schema("demo"):
        world()
        with path.open(encoding="utf-8-sig", newline="") as source:
            bulk = cdrs_import_bulk(source=source, tz="Europe/Madrid", source_name="bulk")
        stored = {c["source_id"]: c for c in Cdr.objects.filter(source="bulk").values(*fields)}
        text = path.read_text(encoding="utf-8")
        records = parse_asterisk_master_csv(io.StringIO(text, newline=""), tz="Europe/Madrid")
        exact = cdrs_ingest(source="exact", records=records, tz="Europe/Madrid")
        expected = {c["source_id"]: c for c in Cdr.objects.filter(source="exact").values(*fields)}
        assert stored == expected
        assert stored["u6"]["caller"] == 'a\\b\t"c",d' and stored["u2"]["account_code"] == "acme,ltd"
        assert stored["u4"]["account_code"] == "bücher-日本" and stored["u4"]["status"] == "rated"
        assert stored["u3"]["caller"] == "" and stored["u3"]["correlation_id"] == ""
        assert [(r["line"], r["column"]) for r in bulk["rejected"]] == [(5, "start"), (6, None)]
        assert bulk["imported"] == exact["imported"] == len(lines) - 2
        assert bulk["charged"] == exact["charged"]
        for account in Account.objects.all():
            assert account.balance == 2 * (account.entries.filter(idempotency_key__startswith="cdr-batch:")
                                           .aggregate(s=Sum("amount"))["s"] or 0)  # fmt: skip


@pytest.mark.django_db
def test_the_shared_deck_is_reused_by_another_process_and_never_outlives_a_rate_change(in_schema, monkeypatch):
    with in_schema("demo"):
        retail = world()
        built = decks.bulk_deck_get(tariff=retail)
        monkeypatch.setattr(decks, "_bulk", {})  # another process: nothing built in memory
        monkeypatch.setattr(decks, "_decks", {})
        loaded = decks.bulk_deck_get(tariff=retail)
        assert loaded is not built and isinstance(loaded.rater.deck, decks._DeckOnDemand)
        numbers = np.array([b"34911234567", b"34600000000", b"44000"])
        at = np.array(["2024-01-15T10:00:00"] * 3, dtype="datetime64[s]")
        first = loaded.rater.rate_bulk(numbers, [61, 61, 61], at)
        assert first.amount_micro.tolist() == built.rater.rate_bulk(numbers, [61, 61, 61], at).amount_micro.tolist()
        # A number over 18 digits takes the scalar path: the deck is read then, with the same price as rate_one.
        long = loaded.rater.rate_bulk(np.array([b"3491123456789012345"]), [61], at[:1])
        assert long.amount_micro.tolist() == [first.amount_micro[0]]
        # A bulk UPDATE does not touch the tariff's updated_at: the shared deck still never comes back stale.
        Rate.objects.filter(tariff=retail, prefix="3491").update(rate=D("0.5"))
        monkeypatch.setattr(decks, "_bulk", {})
        monkeypatch.setattr(decks, "_decks", {})
        changed = decks.bulk_deck_get(tariff=retail).rater.rate_bulk(numbers[:1], [60], at[:1])
        assert changed.amount_micro.tolist() == [500_000]


@pytest.mark.django_db
def test_the_import_also_runs_with_debug_cursors(in_schema, tmp_path, settings):
    # DEBUG (the developer's `make run`) wraps cursors in Django's debug cursor, whose COPY takes no keywords
    settings.DEBUG = True
    path = write(tmp_path, many(30), newline="\n")
    with in_schema("demo"):
        world()
        with path.open(encoding="utf-8", newline="") as source:
            summary = cdrs_import_bulk(source=source, tz="Europe/Madrid", source_name="debug")
        assert summary["imported"] == 30 == Cdr.objects.filter(source="debug").count()
