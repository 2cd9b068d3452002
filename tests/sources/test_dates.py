"""Event dates: ISO 8601 dates of real days kept as written, anything else null (hypothesis)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sources.dates import iso_date


@pytest.mark.parametrize("raw, want", [
    ("2011-05-30", "2011-05-30"), (" 2011-05-30\n", "2011-05-30"), ("2011-05", "2011-05"), ("2011", "2011"),
    ("2012-02-29", "2012-02-29"), ("2020-08-27T20:08:39-05:00", "2020-08-27T20:08:39-05:00"),
    ("2020-08-27T20:08Z", "2020-08-27T20:08Z"), ("2020-08-27 20:08:39.123+0530", "2020-08-27 20:08:39.123+0530"),
    ("2011-05-01/2011-05-31", "2011-05-01/2011-05-31"),
    # the QA's values from a mutated iNaturalist sample, and their kin
    ("2011-13-45", None), ("06/02/2011", None), ("2011-02-30", None), ("2013-02-29", None), ("2011-00-10", None),
    ("2011-5-3", None), ("20110530", None), ("2011-05-30T24:00", None), ("2011-05-30T10:61", None),
    ("2011-05-30T10:00+25:00", None), ("2011-05-30/", None), ("a/b/c", None), ("", None), ("  ", None),
    (None, None), (20110530, None), ("٢٠١١-٠٥-٣٠", None), ("0000-01-01", None),
], ids=repr)
def test_iso_dates(raw, want):
    assert iso_date(raw) == want


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime.datetime(1, 1, 1), timezones=st.none() | st.timezones()),
       st.sampled_from(["date", "month", "year", "minutes", "seconds", "micro"]))
def test_every_real_date_and_time_is_kept_as_written(when, form):
    text = {"date": when.date().isoformat(), "month": when.strftime("%Y-%m") if when.year >= 1000 else None,
            "year": f"{when.year:04d}", "minutes": when.isoformat(timespec="minutes"),
            "seconds": when.isoformat(timespec="seconds"), "micro": when.isoformat(timespec="microseconds")}[form]
    if text is None or (when.utcoffset() or datetime.timedelta()).seconds % 60:
        return  # strftime pads no year below 1000 on every platform; ISO 8601 offsets have no seconds
    assert iso_date(text) == text
    assert iso_date(f"{text}/{text}") == f"{text}/{text}"


@st.composite
def date_shaped(draw) -> str:
    """ISO-shaped text whose fields are mostly in range and sometimes not (month 0 or 13, day 0 or
    32, hour 24, an offset of +24:00...), with stray spaces: most examples reach the checks below."""
    text = f"{draw(st.integers(0, 9999)):04d}"
    for width, low, high in ((2, 0, 13), (2, 0, 32)):
        if not draw(st.booleans()):
            break
        text += f"-{draw(st.integers(low, high)):0{width}d}"
    else:
        if draw(st.booleans()):
            text += f"{draw(st.sampled_from('T '))}{draw(st.integers(0, 24)):02d}:{draw(st.integers(0, 60)):02d}"
            if draw(st.booleans()):
                text += f":{draw(st.integers(0, 60)):02d}"
            text += draw(st.sampled_from(["", "Z", "+05:30", "-0800", "+24:00", "+01:60"]))
    return draw(st.sampled_from(["", " "])) + text + draw(st.sampled_from(["", " ", "\t"]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(date_shaped(), st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)))
def test_whatever_is_kept_is_a_real_date(text):
    kept = iso_date(text)
    if kept is None:
        return
    assert kept == text.strip()
    for part in kept.split("/"):
        head = part[:10]
        if len(head) == 10:
            datetime.date.fromisoformat(head)  # raises for a day that does not exist
        else:
            assert len(head) in (4, 7) and int(head[:4]) >= 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9999), st.integers(-3, 15), st.integers(-3, 40))
def test_a_day_is_kept_exactly_when_the_calendar_has_it(y, m, d):
    text = f"{y:04d}-{m:02d}-{d:02d}" if m >= 0 and d >= 0 else f"{y:04d}-{m}-{d}"
    try:
        real = datetime.date(y, m, d).isoformat() == text
    except ValueError:
        real = False
    assert (iso_date(text) == text) is real
