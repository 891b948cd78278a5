"""Reads of a tariff's class grid (freephone 8-800 pricing): the grid itself, its pricer, its flat average.

A grid has origination classes (rows: where calls come from) and termination classes (columns: where the
freephone number's routing sends them: the operator's own network, other networks…); each cell is the total
price per minute of a call from a row to a column, and each origination class has a `leg_rate`, what the
origination leg alone costs (a call ending on the operator's own IVR pays that only).
"""

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection
from django.db.models import Sum
from django.db.models.fields.json import KeyTextTransform

from .. import rating
from ..choices import CdrStatus, Leg
from ..models import Cdr, ClassRate, Tariff, TariffClass

IVR = "IVR"  # the termination "class" of a call that ended on the operator's own IVR (no forwarded-to number)
_SIX_PLACES = Decimal("0.000001")

# (schema, tariff id) -> (version, pricer); the version changes with any class or cell of the tariff.
_pricers: dict[tuple[str, int], tuple[tuple, rating.ClassGrid | None]] = {}


def class_grid_get(*, tariff: Tariff) -> dict:
    """The tariff's grid as rows × columns, for display and editing.

    ``{"tariff_id", "currency", "first_increment", "next_increment",
    "origination": [{"id", "name", "prefixes", "leg_rate"}], "termination": [{"id", "name", "prefixes"}],
    "rows": [{"origination_id", "origination", "leg_rate",
              "cells": [{"termination_id", "termination", "rate" (Decimal or None when unset)}]}]}``
    — one row per origination class and one cell per termination class, in the classes' order.
    """
    classes = list(TariffClass.objects.filter(tariff=tariff))
    origination = [c for c in classes if c.direction == Leg.ORIGINATION]
    termination = [c for c in classes if c.direction == Leg.TERMINATION]
    cells = {
        (origination_id, termination_id): rate
        for origination_id, termination_id, rate in ClassRate.objects.filter(tariff=tariff).values_list(
            "origination_id", "termination_id", "rate"
        )
    }
    return {
        "tariff_id": tariff.pk,
        "currency": tariff.currency,
        "first_increment": tariff.grid_first_increment,
        "next_increment": tariff.grid_next_increment,
        "origination": [
            {"id": c.pk, "name": c.name, "prefixes": list(c.prefixes), "leg_rate": c.leg_rate} for c in origination
        ],
        "termination": [{"id": c.pk, "name": c.name, "prefixes": list(c.prefixes)} for c in termination],
        "rows": [
            {
                "origination_id": row.pk,
                "origination": row.name,
                "leg_rate": row.leg_rate,
                "cells": [
                    {"termination_id": column.pk, "termination": column.name, "rate": cells.get((row.pk, column.pk))}
                    for column in termination
                ],
            }
            for row in origination
        ],
    }


def class_grid_pricer_get(*, tariff: Tariff) -> rating.ClassGrid | None:
    """The tariff's grid as the pure :class:`rating.ClassGrid` that prices freephone calls; None without classes.

    Cached per process and rebuilt when a class, a cell or the tariff's grid increments change.
    """
    classes = list(
        TariffClass.objects.filter(tariff=tariff).values_list("id", "direction", "name", "prefixes", "leg_rate")
    )
    cells = list(
        ClassRate.objects.filter(tariff=tariff).values_list(
            "origination__name", "termination__name", "rate", "updated_at"
        )
    )
    version = (tariff.grid_first_increment, tariff.grid_next_increment, tuple(map(tuple, classes)), tuple(cells))
    key = (connection.schema_name, tariff.pk)
    cached = _pricers.get(key)
    if cached and cached[0] == version:
        return cached[1]
    pricer = None
    if classes:
        grid_classes = {
            direction: [
                rating.GridClass(name=name, prefixes=frozenset(prefixes), leg_rate=leg_rate)
                for _, class_direction, name, prefixes, leg_rate in classes
                if class_direction == direction
            ]
            for direction in (Leg.ORIGINATION, Leg.TERMINATION)
        }
        pricer = rating.ClassGrid(
            origination=grid_classes[Leg.ORIGINATION],
            termination=grid_classes[Leg.TERMINATION],
            cells={(origination, termination): rate for origination, termination, rate, _ in cells},
            first_increment=tariff.grid_first_increment,
            next_increment=tariff.grid_next_increment,
        )
    _pricers[key] = (version, pricer)
    return pricer


def class_grid_average(*, tariff: Tariff, start: datetime, end: datetime) -> dict:
    """The flat "N per minute from anywhere" figure of a grid, weighted by a period's freephone traffic.

    Traffic: the billed minutes of the rated freephone origination legs priced under this tariff that started in
    [start, end), grouped by the (origination class, termination class) recorded in their ``extra`` when they were
    rated. Each group is weighted with the grid's *current* rate: its cell, or for calls that ended on the own IVR
    the origination class's current ``leg_rate``. Groups whose classes or cell no longer exist are left out and
    counted in ``unmatched_minutes``.

    ``{"average": Decimal (6 places, half-up) or None when there is no matched traffic, "minutes": Decimal,
    "unmatched_minutes": Decimal, "currency", "start", "end",
    "cells": [{"origination", "termination", "minutes", "rate"}]}`` (cells by minutes, most first).
    """
    traffic = (
        Cdr.objects.filter(
            leg=Leg.ORIGINATION,
            status=CdrStatus.RATED,
            start__gte=start,
            start__lt=end,
            extra__tariff_id=tariff.pk,
            extra__has_key="origination_class",
        )
        .annotate(
            origination_class=KeyTextTransform("origination_class", "extra"),
            termination_class=KeyTextTransform("termination_class", "extra"),
        )
        .values("origination_class", "termination_class")
        .annotate(seconds=Sum("billed_seconds"))
        .order_by()
    )
    leg_rates = dict(
        TariffClass.objects.filter(tariff=tariff, direction=Leg.ORIGINATION).values_list("name", "leg_rate")
    )
    cell_rates = {
        (origination, termination): rate
        for origination, termination, rate in ClassRate.objects.filter(tariff=tariff).values_list(
            "origination__name", "termination__name", "rate"
        )
    }
    # Sums in whole seconds, so the average is one exact division, rounded once.
    cells, seconds, unmatched_seconds, weighted = [], 0, 0, Decimal(0)
    for group in traffic:
        group_seconds = group["seconds"] or 0
        origination, termination = group["origination_class"], group["termination_class"] or IVR
        if termination == IVR:
            rate = leg_rates.get(origination)
        else:
            rate = cell_rates.get((origination, termination))
        if rate is None:
            unmatched_seconds += group_seconds
            continue
        cells.append(
            {"origination": origination, "termination": termination, "minutes": _minutes(group_seconds), "rate": rate}
        )
        seconds += group_seconds
        weighted += group_seconds * rate
    cells.sort(key=lambda cell: (-cell["minutes"], cell["origination"], cell["termination"]))
    average = (weighted / seconds).quantize(_SIX_PLACES, rounding=ROUND_HALF_UP) if seconds else None
    return {
        "average": average,
        "minutes": _minutes(seconds),
        "unmatched_minutes": _minutes(unmatched_seconds),
        "currency": tariff.currency,
        "start": start,
        "end": end,
        "cells": cells,
    }


def _minutes(seconds: int) -> Decimal:
    return (Decimal(seconds) / 60).quantize(_SIX_PLACES, rounding=ROUND_HALF_UP)
