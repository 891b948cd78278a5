"""Saved CDR formats (``billing.CdrFormat``) through ``import_cdrs --mapping NAME`` and ``cdr_format_parse``."""

import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from billing.models import Cdr, CdrFormat
from billing.services import CdrFormatError, account_create, cdr_format_parse
from billing.tests.engine_support import tariff_with_deck

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def acme(in_schema):
    with in_schema("demo"):
        retail = tariff_with_deck("Retail", "34,Spain,0.10,,1/1,,,,\n")
        yield account_create(name="Acme", code="acme", currency="EUR", tariff=retail)


def _run(tmp_path, capsys, text: str, **options) -> dict:
    path = tmp_path / "cdrs.csv"
    path.write_text(text)
    call_command("import_cdrs", str(path), operator="demo", **options)
    return json.loads(capsys.readouterr().out)


def test_a_saved_generic_mapping_by_header_names_imports_under_its_own_source(acme, in_schema, tmp_path, capsys):
    with in_schema("demo"):
        CdrFormat.objects.create(
            name="pbx-export",
            kind="generic",
            has_header=True,
            columns={"source_id": "Call", "account": "Customer", "caller": "From", "callee": "To",
                     "start": "Started", "billsec": "Talk", "trunk": "Route"},
        )  # fmt: skip
    text = "Call,Customer,From,To,Started,Talk,Route\nk1,acme,100,34911234567,2026-05-01T10:00:00Z,180,carrier1\n"
    summary = _run(tmp_path, capsys, text, format="generic", mapping="pbx-export")
    # 180 s x 0.10/60 in 1/1 = 0.30.
    assert (summary["imported"], summary["charged"]) == (1, {"EUR": "0.300000"})
    with in_schema("demo"):
        cdr = Cdr.objects.get(source_id="k1")
        assert (cdr.source, cdr.trunk, cdr.price) == ("generic:pbx-export", "carrier1", D("0.3"))


def test_a_saved_positional_format_with_its_delimiter_header_and_time_format(acme, in_schema, tmp_path, capsys):
    with in_schema("demo"):
        CdrFormat.objects.create(
            name="legacy",
            kind="generic",
            columns={"source_id": 0, "account": 1, "callee": 2, "caller": 3, "start": 4, "duration": -1},
            delimiter=";",
            has_header=True,
            time_format="%d/%m/%Y %H:%M",
        )
    text = "id;acct;to;from;when;secs\nL1;acme;34911234567;100;01/05/2026 10:00;60\nL2;acme;34911234567;100;bad;60\n"
    summary = _run(tmp_path, capsys, text, format="generic", mapping="legacy")
    assert summary["imported"] == 1 and summary["charged"] == {"EUR": "0.100000"}
    assert [(r["line"], r["column"]) for r in summary["rejected"]] == [(3, "start")]


def test_an_unknown_mapping_name_is_refused_naming_the_saved_ones(acme, in_schema, tmp_path, capsys):
    with in_schema("demo"):
        CdrFormat.objects.create(name="pbx-export", kind="generic", columns={"caller": "From"})
    with pytest.raises(CommandError, match=r"no saved generic CDR format named 'pbx' \(saved generic formats: pbx-ex"):
        _run(tmp_path, capsys, "x\n", format="generic", mapping="pbx")
    with pytest.raises(CommandError, match="needs --mapping"):
        _run(tmp_path, capsys, "x\n", format="generic")


def test_a_saved_format_that_cannot_read_cdrs_says_why(acme, in_schema):
    with in_schema("demo"):
        CdrFormat.objects.create(name="half", kind="generic", columns={"caller": "From", "callee": "To"})
        with pytest.raises(CdrFormatError, match="format 'half' cannot read CDRs: the mapping must name columns"):
            cdr_format_parse(fmt="generic", source="", mapping_name="half", tz="UTC")
        CdrFormat.objects.create(name="bad-profile", kind="freephone", columns={"caller": 6})
        with pytest.raises(CdrFormatError, match="must give a column for: source_id, callee, start, duration"):
            cdr_format_parse(fmt="freephone", source="", mapping_name="bad-profile", tz="UTC")


def test_an_inline_json_mapping_still_works(acme, in_schema, tmp_path, capsys):
    mapping = json.dumps({"account": "Customer", "caller": "From", "callee": "To", "start": "Started", "billsec": "S"})
    text = "Customer,From,To,Started,S\nacme,1,34911234567,2026-05-01T10:00:00Z,6\n"
    summary = _run(tmp_path, capsys, text, format="generic", mapping=mapping)
    assert summary["charged"] == {"EUR": "0.010000"}
    with in_schema("demo"):
        assert Cdr.objects.get().source == "generic"
