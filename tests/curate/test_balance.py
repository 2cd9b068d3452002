"""Balance keyed on the resolved taxon: rare taxa dropped, big taxa capped by seed, order-free."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.curate.balance import balance, balance_report, decide_balance, taxon_keys
from pipeline.curate.hashing import hash_strings
from pipeline.stage import StageContext
from pipeline.stages.curate import Options
from schemas import Reason
from schemas.record import from_rows
from tests.curate.conftest import dwca_rows, search_rows


def ctx(**kw) -> StageContext:
    return StageContext("curate", Options(**kw))


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    idx = list(range(table.num_rows))
    random.Random(seed).shuffle(idx)
    return table.take(pa.array(idx, pa.int64()))


def species_rows() -> list[dict]:
    return [r for r in dwca_rows() + search_rows() if r["species"]]


def test_rare_and_capped_counts():
    rows = species_rows()
    sizes = Counter(r["taxon_id"] for r in rows)
    out = decide_balance(from_rows(rows), ctx(min_per_taxon=5, max_per_taxon=20))
    rare = sum(n for n in sizes.values() if n < 5)
    capped = sum(n - 20 for n in sizes.values() if n > 20)
    reasons = Counter(out.rejects.column("reason").to_pylist())
    assert reasons == Counter({Reason.RARE_TAXON: rare, Reason.TAXON_CAP: capped})
    kept = Counter(out.out.column("taxon_id").to_pylist())
    assert kept == {t: min(n, 20) for t, n in sizes.items() if n >= 5}
    report = balance_report(out.rejects)
    assert report["taxon_cap"] == {t: n - 20 for t, n in sizes.items() if n > 20}
    assert set(report["rare_taxon"]) == {t for t, n in sizes.items() if n < 5}


def test_same_output_whatever_the_row_order_or_grouping():
    table = from_rows(species_rows())
    c = ctx(min_per_taxon=3, max_per_taxon=10, seed=7)
    first = decide_balance(table, c)
    for seed in range(4):
        again = decide_balance(shuffled(table, seed), c)
        assert again.out.sort_by("record_id").equals(first.out.sort_by("record_id"))
        assert again.rejects.sort_by("record_id").equals(first.rejects.sort_by("record_id"))
    # the runner decides one bucket of many taxa, or one taxon at a time: same answer
    keys = taxon_keys(table).to_pylist()
    per_taxon = [decide_balance(table.filter(pa.array([k == t for k in keys])), c) for t in sorted(set(keys))]
    kept = sorted(r for p in per_taxon for r in p.out.column("record_id").to_pylist())
    assert kept == sorted(first.out.column("record_id").to_pylist())


def test_cap_sample_depends_on_seed():
    table = from_rows(species_rows())
    a = decide_balance(table, ctx(max_per_taxon=10, seed=1)).out.column("record_id").to_pylist()
    b = decide_balance(table, ctx(max_per_taxon=10, seed=2)).out.column("record_id").to_pylist()
    assert len(a) == len(b) and set(a) != set(b)


def test_same_epithet_in_different_genera_never_merge():
    rows = dwca_rows()
    by_epithet: dict[str, set[str]] = {}
    for r in rows:
        if r["species"]:
            by_epithet.setdefault(r["species"].split()[-1], set()).add(r["species"])
    shared = {e: s for e, s in by_epithet.items() if len(s) > 1}
    assert {"texana", "alpinum", "guatemalensis"} <= set(shared)  # real homonymous epithets
    picked = [r for r in rows if r["species"] and r["species"].split()[-1] in shared]
    out = decide_balance(from_rows(picked), ctx(min_per_taxon=1))
    kept = out.out.to_pylist()
    assert {r["species"] for r in kept} == set().union(*shared.values())
    # one key per binomial: Osmia texana and Megachile texana are two taxa
    keys = dict(zip(taxon_keys(out.out).to_pylist(), (r["species"] for r in kept), strict=True))
    assert len(set(keys.values())) == len(keys) == len(set().union(*shared.values()))


def test_keys_without_taxon_id_use_the_full_lineage_or_non_living_class():
    base = search_rows()[0]
    rows = [dict(base, taxon_id=None), dict(base, taxon_id=None, genus="Other"),
            dict(base, taxon_id=None, living=False, non_living_class="detritus")]
    keys = taxon_keys(from_rows(rows)).to_pylist()
    assert keys[0].startswith("lineage:Fungi|") and keys[0] != keys[1]
    assert keys[2] == "non_living:detritus"


def test_empty_group():
    out = decide_balance(from_rows([]), ctx(min_per_taxon=2))
    assert out.out.num_rows == out.rejects.num_rows == 0


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.text("xyz0123", min_size=1, max_size=6)), max_size=80,
                unique_by=lambda t: t[1]),
       st.integers(0, 4), st.integers(1, 6), st.integers(0, 3))
def test_keeps_the_lowest_hashes_of_each_taxon(rows, lo, cap, seed):
    """The definition: a taxon under the minimum goes; else its ``cap`` rows of lowest
    ``hash(seed, record_id)`` stay (ties by record id), whatever the row order."""
    table = pa.table({"record_id": [r for _, r in rows], "taxon_id": [t for t, _ in rows]})
    out = balance(table, table.column("taxon_id"), lo, cap, seed, "curate_balance", ordered=False)
    h = dict(zip((r for _, r in rows), hash_strings(table.column("record_id"), f"cap:{seed}").tolist(), strict=True))
    want = set()
    for taxon in {t for t, _ in rows}:
        ids = sorted((r for t, r in rows if t == taxon), key=lambda r: (h[r], r))
        if len(ids) >= lo:
            want |= set(ids[:cap])
    assert set(out.out.column("record_id").to_pylist()) == want
    assert out.out.num_rows + out.rejects.num_rows == len(rows)
    assert out.out.column("record_id").to_pylist() == [r for _, r in rows if r in want]  # input order kept


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "", None]), st.text("xyz0123", min_size=1, max_size=6)),
                max_size=80, unique_by=lambda t: t[1]),
       st.integers(0, 4), st.integers(1, 6), st.integers(1, 3))
def test_dictionary_taxon_ids_balance_as_plain_text(rows, lo, cap, pieces):
    """The fused curate gives the balance its ``taxon_id`` dictionary (file by file, so chunked with
    different dictionaries) as the keys: kept rows and rejects equal those of the plain keys,
    blank and missing ids included (those fall back to the lineage)."""
    from pipeline.curate.balance import balance_rows, taxon_key_codes

    plain = pa.table({"record_id": [r for _, r in rows], "taxon_id": pa.array([t for t, _ in rows], pa.string()),
                      "kingdom": ["Animalia"] * len(rows)})
    size = max(1, -(-len(rows) // pieces))
    coded = plain.set_column(1, "taxon_id", pa.chunked_array(
        [plain.column("taxon_id").slice(i, size).combine_chunks().dictionary_encode()
         for i in range(0, len(rows), size)] or [pa.array([], pa.string()).dictionary_encode()]))
    keep_p, _, rej_p = balance_rows(plain, taxon_keys(plain), lo, cap, 1, "curate_balance")
    keep_d, _, rej_d = balance_rows(coded, taxon_key_codes(coded), lo, cap, 1, "curate_balance")
    assert (keep_p == keep_d).all()
    assert rej_p.equals(rej_d)
