"""A benchmark run written into its results file without losing what was written there by hand.

Each run's text sits between two marks (HTML comments, not shown by Markdown); the next run of
the same section replaces only what is between them, so notes written by hand above or below, in
the same section, stay where they are. A section written before these marks is kept whole below
the new run (its head marked as an earlier run): it may hold notes, which nothing deletes.
"""

from __future__ import annotations

from pathlib import Path

END = "<!-- end of the generated run -->"


def _begin(head: str, script: str) -> str:
    return f"<!-- {head.lstrip('#').strip()}: written by {script}; its next run replaces this, up to the end mark -->"


def merge_section(old: str, section: str, script: str) -> str:
    """``old`` (a results file's text) with ``section`` (its first line the ``## `` head) in it."""
    head, _, body = section.strip("\n").partition("\n")
    begin = _begin(head, script)
    block = f"{begin}\n{body.strip(chr(10))}\n{END}"
    if begin in old:
        i = old.index(begin)
        j = old.index(END, i) + len(END)
        return old[:i] + block + old[j:]
    lines = old.split("\n")
    if head in lines:  # the whole head line: ``## ingest_gbif`` is not ``## ingest_gbif (--small)``
        start = sum(len(line) + 1 for line in lines[:lines.index(head)])
        nxt = old.find("\n## ", start + 1)
        end = nxt + 1 if nxt != -1 else len(old)
        previous = old[start:end].replace(head, f"{head}: an earlier run", 1).rstrip("\n")
        rest = old[end:]
        return old[:start] + f"{head}\n\n{block}\n\n{previous}\n" + (f"\n{rest}" if rest else "")
    return old.rstrip("\n") + f"\n\n{head}\n\n{block}\n"


def write_section(path: Path, title: str, section: str, script: str) -> None:
    """:func:`merge_section` into the file at ``path`` (made with ``title`` when missing)."""
    old = path.read_text() if path.exists() else title.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(merge_section(old, section, script))
