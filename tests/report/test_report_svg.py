"""The SVG helpers: well-formed output, numbers that round-trip through the attributes, correct scales and projection."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.stages import report_svg as svg

NS = "{http://www.w3.org/2000/svg}"
labels = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60)
counts = st.integers(min_value=0, max_value=10**9)


def _bars(doc: str) -> list[ET.Element]:
    return ET.fromstring(doc).findall(f".//{NS}rect[@class='bar']")


@given(st.lists(st.tuples(labels, counts), max_size=30), st.booleans())
def test_bar_chart_is_well_formed_and_keeps_every_number(items, log):
    doc = svg.bar_chart(items, "t <&> \"q\"", log=log)
    rects = _bars(doc)
    assert [(r.get("data-label"), int(r.get("data-count"))) for r in rects] == items
    widths = [float(r.get("width")) for r in rects]
    plot = 760 - svg.LABEL_WIDTH - svg.VALUE_WIDTH
    assert all(0 <= w <= plot + 0.05 for w in widths)
    for (_, a), wa in zip(items, widths, strict=True):
        for (_, b), wb in zip(items, widths, strict=True):
            if a < b:
                assert wa <= wb  # a larger count never gets a shorter bar


@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=20))
def test_linear_bars_are_proportional(values):
    rects = _bars(svg.bar_chart([(str(i), v) for i, v in enumerate(values)], "t"))
    top = svg.nice_ticks(max(values))[-1]
    plot = 760 - svg.LABEL_WIDTH - svg.VALUE_WIDTH
    for r, v in zip(rects, values, strict=True):
        assert float(r.get("width")) == pytest.approx(plot * v / top, abs=0.06)


@pytest.mark.parametrize("value, top, expected", [(1, 100, 0.02), (10, 100, 0.5), (100, 100, 1.0), (0, 100, 0.0),
                                                  (1000, 1000, 1.0), (31.6227766, 1000, 0.5)],
                         ids=["one-sliver", "one-decade", "top", "zero", "three-decades", "half-way"])
def test_log_positions(value, top, expected):
    assert svg.log_position(value, top) == pytest.approx(expected, abs=1e-6)


@given(st.floats(min_value=1e-3, max_value=1e12, allow_nan=False))
def test_nice_ticks_cover_the_largest_value_in_round_steps(largest):
    ticks = svg.nice_ticks(largest)
    assert ticks[0] == 0 and ticks[-1] >= largest * (1 - 1e-9) and 2 <= len(ticks) <= 6
    step = ticks[1]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
    assert all(t2 - t1 == pytest.approx(step) for t1, t2 in zip(ticks, ticks[1:], strict=False))


@given(st.lists(st.tuples(labels, st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20))
def test_stacked_bars_keep_each_segment(rows):
    doc = svg.stacked_bar_chart([(lab, {"ok": a, "failed": b}) for lab, a, b in rows], ["ok", "failed"], "hosts")
    groups = ET.fromstring(doc).findall(f".//{NS}g[@class='stack']")
    assert [(g.get("data-label"), int(g.get("data-ok")), int(g.get("data-failed")), int(g.get("data-count")))
            for g in groups] == [(lab, a, b, a + b) for lab, a, b in rows]


@pytest.mark.parametrize("lat, lon, xy", [(90, -180, (0, 0)), (-90, 180, (720, 360)), (0, 0, (360, 180)),
                                          (45, 90, (540, 90))], ids=["north-west", "south-east", "origin", "ne-mid"])
def test_equirectangular_projection(lat, lon, xy):
    assert svg.project(lat, lon, 720, 360) == pytest.approx(xy)


@given(st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180)), max_size=50))
def test_world_map_draws_each_point_inside_the_frame(points):
    root = ET.fromstring(svg.world_map(points, "map", total=len(points) + 3))
    circles = root.findall(f".//{NS}circle")
    assert len(circles) == len(points) and root.get("data-count") == str(len(points))
    assert root.get("data-total") == str(len(points) + 3)
    for c in circles:
        assert 0 <= float(c.get("cx")) <= 720 and 0 <= float(c.get("cy")) <= 360
    assert len(root.findall(f".//{NS}line[@class='graticule']")) == 11 + 5
