"""The SMS reports API: /api/v1/sms/reports/{today,messages,messages.csv,summary} (the traffic of test_reports.py)."""

import csv
import io

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncRequestFactory, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sms.api.reports import csv_stream_response
from sms.selectors_reports import lines_async, sms_message_report, sms_message_report_csv
from sms.tests.test_reports import MADRID, madrid_day, message_make, traffic  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db

BASE = "/api/v1/sms/reports/"
MARCH_10 = {"from": "2026-03-10", "to": "2026-03-11"}  # a whole day in Madrid


def csv_lines(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def message_queries(queries) -> list[str]:
    return [q["sql"] for q in queries if '"sms_message"' in q["sql"] or '"sms_smsclient"' in q["sql"]]


# --- today ----------------------------------------------------------------------------------------------------------


def test_today_counts_the_callers_own_messages(client, sms_world, in_schema):
    now = timezone.now()
    with in_schema("demo"):
        message_make(sms_world.client.customer, now, parts=2)
        message_make(sms_world.client.customer, now, status="accepted", charged=False)
        message_make(sms_world.other.customer, now, parts=3)
    mine = client.get(BASE + "today", HTTP_HOST="demo.localhost", **sms_world.auth)
    assert mine.status_code == 200, mine.content
    body = mine.json()
    assert (body["messages"], body["parts"], body["credit"], body["currency"], body["pending"]) == (
        2,
        2,
        "0.10",
        "EUR",
        1,
    )
    assert body["time_zone"] == "Europe/Madrid" and body["date"] == timezone.localdate(timezone=MADRID).isoformat()
    staff = client.get(BASE + "today/", HTTP_HOST="demo.localhost", **sms_world.staff_auth).json()
    assert (staff["messages"], staff["parts"], staff["credit"]) == (3, 5, "0.25")


# --- per message ----------------------------------------------------------------------------------------------------


def test_the_message_report_pages_a_clients_day(client, sms_world, traffic):  # noqa: F811
    with CaptureQueriesContext(connection) as queries:
        response = client.get(
            BASE + "messages", {**MARCH_10, "page_size": 2}, HTTP_HOST="demo.localhost", **sms_world.auth
        )
    assert response.status_code == 200, response.content
    assert len(message_queries(queries)) == 2  # the count and the page
    body = response.json()
    m = traffic
    assert (
        body["count"] == 5 and body["next"] and [r["message_id"] for r in body["results"]] == [m["m5"].pk, m["m4"].pk]
    )
    rest = client.get(
        BASE + "messages", {**MARCH_10, "page_size": 10}, HTTP_HOST="demo.localhost", **sms_world.auth
    ).json()["results"]
    m3 = next(r for r in rest if r["message_id"] == m["m3"].pk)
    assert m3 == {
        "message_id": m["m3"].pk,
        "date": "2026-03-10T11:00:00+01:00",
        "number": "+34622222222",
        "type": "text",
        "length": 5,
        "parts": 2,
        "sender": "TEXTCO",
        "country": "ES",
        "operator": "Vodafone",
        "credit": "0.100000",
        "currency": "EUR",
        "status": "undelivered",
        "error_code": "1",
        "description": "Absent subscriber",
        "client_reference": "",
    }
    assert m["m7"].pk not in {r["message_id"] for r in rest}  # B's


def test_the_message_report_filters_by_status_number_and_operator(client, sms_world, traffic):  # noqa: F811
    def ids(**params):
        response = client.get(BASE + "messages", {**MARCH_10, **params}, HTTP_HOST="demo.localhost", **sms_world.auth)
        assert response.status_code == 200, response.content
        return {r["message_id"] for r in response.json()["results"]}

    m = traffic
    assert ids(status="undelivered,rejected") == {m["m3"].pk, m["m4"].pk}
    assert ids(number="+3461111") == {m["m1"].pk, m["m4"].pk}
    assert ids(operator="Orange", country="fr") == {m["m8"].pk}


def test_staff_see_every_clients_messages_with_client_and_cost(client, sms_world, traffic):  # noqa: F811
    with CaptureQueriesContext(connection) as queries:
        response = client.get(
            BASE + "messages",
            {**MARCH_10, "client": sms_world.other.pk},
            HTTP_HOST="demo.localhost",
            **sms_world.staff_auth,
        )
    assert response.status_code == 200, response.content
    assert len(message_queries(queries)) == 4  # the client asked for, the count, the page, the clients' names
    (row,) = response.json()["results"]
    assert (row["message_id"], row["client_id"], row["client_name"], row["cost"]) == (
        traffic["m7"].pk,
        sms_world.other.pk,
        sms_world.other.customer.name,
        "0.020000",
    )


def test_the_message_report_streams_csv(client, sms_world, traffic):  # noqa: F811
    for url, params in ((BASE + "messages", {**MARCH_10, "format": "csv"}), (BASE + "messages.csv", MARCH_10)):
        response = client.get(url, params, HTTP_HOST="demo.localhost", **sms_world.auth)
        assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
        assert response["Content-Disposition"] == 'attachment; filename="sms-messages-20260310-20260310.csv"'
        lines = csv_lines(response)
        assert lines[0][:4] == ["message_id", "date", "number", "type"] and "cost" not in lines[0]
        assert [int(line[0]) for line in lines[1:]] == [traffic[k].pk for k in ("m5", "m4", "m3", "m8", "m1")]
    staff = csv_lines(client.get(BASE + "messages.csv", MARCH_10, HTTP_HOST="demo.localhost", **sms_world.staff_auth))
    assert staff[0][-3:] == ["client_id", "client", "cost"]
    assert str(traffic["m7"].pk) in {line[0] for line in staff[1:]}


# --- summary --------------------------------------------------------------------------------------------------------


def test_the_summary_by_month_for_a_client(client, sms_world, traffic):  # noqa: F811
    params = {"by": "month", "from": "2026-03-01", "to": "2026-05-01"}
    body = client.get(BASE + "summary", params, HTTP_HOST="demo.localhost", **sms_world.auth).json()
    assert body["by"] == "month" and body["time_zone"] == "Europe/Madrid"
    assert [
        (r["period"], r["country"], r["operator"], r["messages"], r["parts"], r["credit"]) for r in body["rows"]
    ] == [
        ("2026-03", "ES", "Movistar", 4, 4, "0.20"),
        ("2026-03", "ES", "Vodafone", 1, 2, "0.10"),
        ("2026-03", "FR", "Orange", 1, 3, "0.01"),
        ("2026-04", "FR", "Orange", 1, 1, "0.07"),
    ]
    assert "cost" not in body["rows"][0] and "margin" not in body["totals"][0]
    assert body["totals"] == [
        {
            "currency": "EUR",
            "messages": 7,
            "delivered": 4,
            "failed": 2,
            "parts": 10,
            "unit_price": "0.038050",
            "credit": "0.38",
        }
    ]


def test_the_summary_for_staff_per_client_with_cost_and_csv(client, sms_world, traffic):  # noqa: F811
    params = {**MARCH_10, "per_client": "true"}
    body = client.get(BASE + "summary", params, HTTP_HOST="demo.localhost", **sms_world.staff_auth).json()
    b_row = next(r for r in body["rows"] if r["client_id"] == sms_world.other.pk)
    assert (b_row["period"], b_row["operator"], b_row["credit"], b_row["cost"], b_row["margin"]) == (
        "2026-03-10",
        "Movistar",
        "0.05",
        "0.02",
        "0.03",
    )
    response = client.get(
        BASE + "summary", {**params, "format": "csv"}, HTTP_HOST="demo.localhost", **sms_world.staff_auth
    )
    lines = csv_lines(response)
    assert lines[0][:3] == ["period", "client_id", "client"] and lines[0][-3:] == ["unit_cost", "cost", "margin"]
    assert lines[-1][0] == "total"


def test_a_client_cannot_see_other_clients_in_the_summary(client, sms_world, traffic):  # noqa: F811
    body = client.get(
        BASE + "summary", {"from": "2026-03-01", "to": "2026-05-01"}, HTTP_HOST="demo.localhost", **sms_world.other_auth
    ).json()
    assert [(r["period"], r["messages"]) for r in body["rows"]] == [("2026-03-10", 1)]  # B's m7 only


# --- errors and isolation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("messages", {"from": "2026-13-01"}, "from"),
        ("messages", {"from": "2026-03-10", "to": "2026-03-01"}, "to"),
        ("messages", {"from": "2025-01-01", "to": "2026-03-01"}, "to"),
        ("messages", {"status": "delivered,lost"}, "status"),
        ("messages", {"number": "12ab"}, "number"),
        ("messages", {"country": "Spain"}, "country"),
        ("messages", {"format": "xml"}, "format"),
        ("messages.csv", {"to": "yesterday"}, "to"),
        ("summary", {"by": "week"}, "by"),
        ("summary", {"per_client": "maybe"}, "per_client"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, sms_world, path, params, field):
    response = client.get(BASE + path, params, HTTP_HOST="demo.localhost", **sms_world.auth)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]


def test_the_range_error_says_the_cap(client, sms_world):
    response = client.get(
        BASE + "summary", {"from": "2025-01-01", "to": "2026-03-01"}, HTTP_HOST="demo.localhost", **sms_world.auth
    )
    assert "at most 366 days" in response.json()["error"]["fields"]["to"][0]


def test_only_staff_choose_a_client(client, sms_world):
    for path in ("messages", "summary"):
        response = client.get(BASE + path, {"client": sms_world.other.pk}, HTTP_HOST="demo.localhost", **sms_world.auth)
        assert response.status_code == 400 and "client" in response.json()["error"]["fields"]
    unknown = client.get(BASE + "messages", {"client": 999999}, HTTP_HOST="demo.localhost", **sms_world.staff_auth)
    assert unknown.status_code == 400 and "client" in unknown.json()["error"]["fields"]


@pytest.mark.parametrize("path", ["today", "messages", "messages.csv", "summary"])
def test_another_operators_key_is_401(client, sms_world, path):
    assert client.get(BASE + path, HTTP_HOST="demo.localhost", **sms_world.rival_auth).status_code == 401


@pytest.mark.parametrize("path", ["today", "messages", "summary"])
def test_a_login_that_is_neither_staff_nor_a_customer_is_refused(client, world, path):
    client.cookies["sessionid"] = world.sessions["demo_nonstaff"]
    assert client.get(BASE + path, HTTP_HOST="demo.localhost").status_code == 403


def test_under_asgi_the_csv_is_streamed_asynchronously(sms_world, traffic, in_schema):  # noqa: F811
    # uvicorn serves an ASGIRequest: the download is then an async stream (Django would read a sync one whole first)
    assert csv_stream_response(iter(["a\n"]), request=AsyncRequestFactory().get("/"), filename="x.csv").is_async
    assert not csv_stream_response(iter(["a\n"]), request=RequestFactory().get("/"), filename="x.csv").is_async
    with in_schema("demo"):
        rows = sms_message_report(
            customer=sms_world.client.customer, start=madrid_day(2026, 3, 10), end=madrid_day(2026, 3, 11)
        )
        stream = lines_async(sms_message_report_csv(rows=rows, staff=False, tz="Europe/Madrid"), batch=2)

        async def read() -> list[str]:
            return [chunk async for chunk in stream]

        chunks = async_to_sync(read)()  # in this thread, as the request's thread is under ASGI
    assert len(chunks) == 3  # the header and five messages, two lines at a time
    lines = list(csv.reader(io.StringIO("".join(chunks))))
    assert lines[0][0] == "message_id"
    assert [int(line[0]) for line in lines[1:]] == [traffic[k].pk for k in ("m5", "m4", "m3", "m8", "m1")]
