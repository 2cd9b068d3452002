"""Event dates as the record holds them: ISO 8601 text that names a real day (or month, or year).

A source's date is kept as written when it is such a date, otherwise not at all: connectors store
null in ``event_date`` and the raw text in ``extra``, so that ``2011-13-45`` or ``06/02/2011``
never reaches a query or a filter as if it were a date.
"""

from __future__ import annotations

import datetime
import re

# [+-]YYYY[-MM[-DD[(T| )hh:mm[:ss[.fraction]][Z|±hh[:mm]]]]]: ISO 8601's extended calendar forms
# (a space for the T as RFC 3339 allows); basic forms (20110530) and week or ordinal dates are not
# what any source here writes, and too easily confused with other numbers to guess at
_ISO = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:[T ](?P<hh>\d{2}):(?P<mm>\d{2})(?::(?P<ss>\d{2})(?:[.,]\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?",
    re.ASCII)


def iso_date(value: object) -> str | None:
    """``value`` stripped when it is an ISO 8601 date or date-time of a real calendar day and
    time (``2011-05-30``, ``2011-05``, ``2011``, ``2020-08-27T20:08:39-05:00``), or an interval of
    two such (``2011-05-01/2011-05-31``, GBIF's ``eventDate``); ``None`` for anything else
    (``2011-13-45``, ``2011-02-30``, ``06/02/2011``, empty)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    parts = text.split("/")
    if not text or len(parts) > 2 or not all(_valid(p) for p in parts):
        return None
    return text


def _valid(text: str) -> bool:
    m = _ISO.fullmatch(text)
    if m is None:
        return False
    try:
        datetime.date(int(m["y"]), int(m["m"] or 1), int(m["d"] or 1))
    except ValueError:
        return False
    if m["hh"] is not None and (int(m["hh"]) > 23 or int(m["mm"]) > 59 or int(m["ss"] or 0) > 59):
        return False
    tz = m["tz"]
    if tz and tz != "Z":
        digits = tz[1:].replace(":", "")
        if int(digits[:2]) > 23 or (len(digits) > 2 and int(digits[2:]) > 59):
            return False
    return True
