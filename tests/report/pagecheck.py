"""Reads the numbers back out of a rendered report page: bars by figure, overview cells, the JSON blob."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path


class PageNumbers(HTMLParser):
    """Collects ``data-count`` of every bar per enclosing ``<figure id>``, overview cells, sections and images."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: dict[str, list[dict[str, str]]] = {}
        self.overview: dict[str, int | None] = {}
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.not_run: int = 0
        self._figure: list[str | None] = []
        self._row: str | None = None
        self._in_not_run = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure":
            self._figure.append(a.get("id"))
        elif tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "img":
            self.images.append(a)
        elif tag == "tr" and "data-key" in a:
            self._row = a["data-key"]
        if "not-run" in a.get("class", "").split():
            self.not_run += 1
            if self._row is not None:
                self.overview[self._row] = None
        if "data-count" in a:
            if self._row is not None and tag == "td":
                self.overview[self._row] = int(a["data-count"])
            fig = next((f for f in reversed(self._figure) if f), None)
            if fig and "data-label" in a:
                self.figures.setdefault(fig, []).append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self._figure:
            self._figure.pop()
        elif tag == "tr":
            self._row = None


def parse_page(path: Path) -> PageNumbers:
    parser = PageNumbers()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser


def bars(page: PageNumbers, figure: str) -> dict[str, float]:
    """label -> count of the bars in ``figure``, in page order."""
    return {b["data-label"]: float(b["data-count"]) for b in page.figures.get(figure, [])}


def page_data(path: Path) -> dict:
    """The ``<script type="application/json" id="report-data">`` blob."""
    text = Path(path).read_text(encoding="utf-8")
    m = re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", text, re.S)
    assert m, "report-data blob missing"
    return json.loads(m.group(1))
