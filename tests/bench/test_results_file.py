"""Benchmarks write their runs into bench/results/ without deleting notes written there by hand."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from results_file import merge_section  # noqa: E402

OLD = "# t\n\n## run a\n\ngenerated 1\n\nNotes by hand about it.\n\n## run b\n\nB\n"


def test_a_section_from_before_the_marks_is_kept_whole_below_the_new_run():
    new = merge_section(OLD, "## run a\n\ngenerated 2\n", "bench/x.py")
    assert new.index("generated 2") < new.index("## run a: an earlier run") < new.index("generated 1")
    assert "Notes by hand about it." in new and new.endswith("## run b\n\nB\n")


def test_a_marked_run_is_replaced_and_the_notes_around_it_stay():
    once = merge_section("# t\n", "## run a\n\ngenerated 1\n", "bench/x.py")
    noted = once.replace("<!-- end of the generated run -->", "<!-- end of the generated run -->\n\nA note.")
    twice = merge_section(noted, "## run a\n\ngenerated 2\n", "bench/x.py")
    assert "generated 1" not in twice and "generated 2" in twice and twice.endswith("A note.\n")
    assert twice.count("## run a") == 1
    other = merge_section(twice, "## run c\n\nC\n", "bench/x.py")
    assert other.startswith(twice.rstrip("\n")) and other.endswith("C\n<!-- end of the generated run -->\n")


def test_a_head_is_matched_as_a_whole_line_not_as_the_start_of_another():
    old = "# t\n\n## run (--small)\n\nsmall 1\n\nNotes.\n\n## run\n\nbig 1\n\nNotes on big.\n"
    new = merge_section(old, "## run\n\nbig 2\n", "bench/x.py")
    assert new.startswith("# t\n\n## run (--small)\n\nsmall 1\n\nNotes.\n\n## run\n\n<!--")
    assert new.index("big 2") < new.index("## run: an earlier run") < new.index("big 1")
