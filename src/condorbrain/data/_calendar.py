"""NYSE trading calendar (full sessions only) and listed option expiries, rule-based, no network.

The rules reproduce the NYSE's regular holidays since 1999 and its unscheduled closures; the test suite checks
that :func:`trading_days` equals the trading dates of the real S&P 500 series shipped by ``arch`` (1999-2018).
Early closes (13:00 sessions) are not modelled: every session here is 09:30-16:00 New York time.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np

NEW_YORK = ZoneInfo("America/New_York")
SESSION_OPEN = dt.time(9, 30)
SESSION_CLOSE = dt.time(16, 0)
MINUTES_PER_SESSION = 390

# Closures that no rule predicts (NYSE notices): 9/11, state funerals, Hurricane Sandy.
SPECIAL_CLOSURES = frozenset(
    dt.date.fromisoformat(d)
    for d in ("2001-09-11", "2001-09-12", "2001-09-13", "2001-09-14", "2004-06-11", "2007-01-02",
              "2012-10-29", "2012-10-30", "2018-12-05", "2025-01-09")
)


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return dt.date(year, month, day)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The n-th (1-based; -1 = last) ``weekday`` (Mon=0) of a month."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _observed(day: dt.date) -> dt.date:
    """Saturday holidays move to Friday, Sunday holidays to Monday."""
    if day.weekday() == 5:
        return day - dt.timedelta(days=1)
    if day.weekday() == 6:
        return day + dt.timedelta(days=1)
    return day


def nyse_holidays(year: int) -> set[dt.date]:
    """Regular NYSE holidays of ``year`` (rules in force since 1999) plus :data:`SPECIAL_CLOSURES`."""
    days = {
        _nth_weekday(year, 1, 0, 3),  # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),  # Washington's Birthday
        _easter(year) - dt.timedelta(days=2),  # Good Friday
        _nth_weekday(year, 5, 0, -1),  # Memorial Day
        _observed(dt.date(year, 7, 4)),
        _nth_weekday(year, 9, 0, 1),  # Labor Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
        _observed(dt.date(year, 12, 25)),
    }
    new_year = dt.date(year, 1, 1)
    if new_year.weekday() != 5:  # NYSE does not close on Friday Dec 31 for a Saturday New Year
        days.add(_observed(new_year))
    if year >= 2022:
        days.add(_observed(dt.date(year, 6, 19)))  # Juneteenth
    days |= {d for d in SPECIAL_CLOSURES if d.year == year}
    return days


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE trading dates in [start, end], ascending."""
    holidays: set[dt.date] = set()
    for year in range(start.year, end.year + 1):
        holidays |= nyse_holidays(year)
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    weekday = (days.astype("int64") + 3) % 7  # 1970-01-01 was a Thursday (3)
    return [d for d in days[weekday < 5].tolist() if d not in holidays]


def next_trading_days(start: dt.date, n: int) -> list[dt.date]:
    """The first ``n`` NYSE trading dates on or after ``start``."""
    out: list[dt.date] = []
    end = start
    while len(out) < n:
        end = end + dt.timedelta(days=max(2 * (n - len(out)), 10))
        out = trading_days(start, end)
    return out[:n]


def at_new_york(day: dt.date, time: dt.time) -> dt.datetime:
    """The UTC instant of ``time`` New York wall-clock on ``day``."""
    return dt.datetime.combine(day, time, tzinfo=NEW_YORK).astimezone(dt.timezone.utc)


def expiry_dates(start: dt.date, end: dt.date, kind: str) -> list[dt.date]:
    """Option expiry dates in [start, end]: ``"weekly"`` (every Friday) or ``"monthly"`` (third Friday).

    An expiry on a holiday moves to the previous trading day, as listed SPY / SPX options do.
    """
    days = set(trading_days(start - dt.timedelta(days=7), end + dt.timedelta(days=7)))
    out = []
    friday = start + dt.timedelta(days=(4 - start.weekday()) % 7)
    while friday <= end + dt.timedelta(days=7):
        if kind == "weekly" or (kind == "monthly" and 15 <= friday.day <= 21):
            day = friday
            while day not in days:
                day -= dt.timedelta(days=1)
            if start <= day <= end:
                out.append(day)
        elif kind not in ("weekly", "monthly"):
            raise ValueError(f"expiry kind must be 'weekly' or 'monthly', got {kind!r}")
        friday += dt.timedelta(days=7)
    return out
