"""A tariff's class grid (freephone pricing): save every cell of it at once, or none.

A cell is the total price per minute of a call from an origination class (a row) to a termination class (a
column) of the same tariff. The origination leg alone costs the row's `leg_rate`, and the termination leg is
priced as the difference, so a cell may never be below its row's `leg_rate`.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from ..choices import Leg
from ..models import ClassRate, Tariff, TariffClass
from ..rating import MAX_PRICE

MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class GridCell:
    origination: int  # TariffClass id (direction origination)
    termination: int  # TariffClass id (direction termination)
    rate: object  # Decimal, text ("0.05"), or None / "" for "no price for this pair"


@dataclass(frozen=True)
class CellError:
    origination: int
    termination: int
    reason: str


class GridInvalid(Exception):
    """Some cells are wrong: nothing was saved; `errors` names each bad cell."""

    def __init__(self, errors: list[CellError]):
        self.errors = errors
        super().__init__("; ".join(f"({e.origination}, {e.termination}): {e.reason}" for e in errors))


def _cell_rate(value: object, leg_rate: Decimal | None) -> Decimal | None | str:
    """The cell's rate, None for an empty cell, or the reason it is not acceptable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (bool, float)):
        return "give the rate as a decimal string such as 0.05, not a float"
    try:
        rate = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError, ValueError):
        return f"{value!r} is not a number"
    if not rate.is_finite():
        return f"{value!r} is not a number"
    if rate < 0:
        return f"the rate must not be negative, got {rate}"
    if rate >= MAX_PRICE:
        return f"the rate must be below {MAX_PRICE}"
    if rate != rate.quantize(MICRO):
        return "the rate may have at most 6 decimal places"
    if leg_rate is not None and rate < leg_rate:
        return f"the rate {rate} is below the origination leg rate {leg_rate} of its row"
    return rate


def tariff_touch(*, tariff: Tariff) -> None:
    """Mark a tariff changed, so the caches of its deck and grid (keyed on `updated_at`) are rebuilt."""
    now = timezone.now()
    Tariff.objects.filter(pk=tariff.pk).update(updated_at=now)
    tariff.updated_at = now


def class_grid_save(*, tariff: Tariff, cells: Iterable[GridCell]) -> int:
    """Replace the tariff's whole grid with `cells`: every cell is checked first, and if any is wrong nothing is
    saved and GridInvalid names every bad cell. Pairs left out, or given an empty rate, lose their price.

    Returns the number of priced cells the grid now has.
    """
    classes = {c.pk: c for c in TariffClass.objects.filter(tariff=tariff)}
    errors: list[CellError] = []
    priced: dict[tuple[int, int], Decimal] = {}
    seen: set[tuple[int, int]] = set()
    for cell in cells:
        key = (cell.origination, cell.termination)
        origination, termination = classes.get(cell.origination), classes.get(cell.termination)
        if origination is None or origination.direction != Leg.ORIGINATION:
            errors.append(CellError(*key, f"{cell.origination} is no origination class of tariff {tariff.name}"))
            continue
        if termination is None or termination.direction != Leg.TERMINATION:
            errors.append(CellError(*key, f"{cell.termination} is no termination class of tariff {tariff.name}"))
            continue
        if key in seen:
            errors.append(CellError(*key, "the cell is given twice"))
            continue
        seen.add(key)
        rate = _cell_rate(cell.rate, origination.leg_rate)
        if isinstance(rate, str):
            errors.append(CellError(*key, rate))
        elif rate is not None:
            priced[key] = rate
    if errors:
        raise GridInvalid(errors)
    with transaction.atomic():
        ClassRate.objects.filter(tariff=tariff).exclude(
            pk__in=[
                pk
                for pk, o, t in ClassRate.objects.filter(tariff=tariff).values_list("pk", "origination", "termination")
                if (o, t) in priced
            ]
        ).delete()
        ClassRate.objects.bulk_create(
            [ClassRate(tariff=tariff, origination_id=o, termination_id=t, rate=r) for (o, t), r in priced.items()],
            update_conflicts=True,
            unique_fields=["origination", "termination"],
            update_fields=["rate", "updated_at"],
        )
        tariff_touch(tariff=tariff)
    return len(priced)
