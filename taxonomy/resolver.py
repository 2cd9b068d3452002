"""Name resolution: unique names (with the record's own lineage hints) to one backbone lineage and its evidence.

Everything runs over *unique* (name, hints) combinations with Polars joins; there is no loop over
records or names in Python (the parser runs once per unique string). The steps:

1. normalise (:mod:`taxonomy.names`); non-living plankton labels stop here (``non_living``);
2. exact canonical match; a synonym gives its accepted taxon's lineage (``synonym``);
3. candidates are narrowed with the record's hints, kingdom first, then phylum ... genus, then the
   free ``verbatim_lineage``; a hint that contradicts every candidate is reported, not obeyed
   (the backbone decides). Accepted usages beat doubtful ones, which beat synonyms; the seven main
   ranks beat intermediate ones (genus *Pinus* over subgenus *Pinus*). Candidates that still
   disagree are settled only where they agree: a pro-parte synonym of a species and of one of its
   subspecies resolves to the species; candidates in different families or kingdoms are an
   ``ambiguous_homonym`` and nothing is guessed;
4. fuzzy match for the names still without a candidate: Damerau (OSA) edit distance computed in C
   by rapidfuzz over pairs blocked by genus (or first three letters of an unknown genus) and
   length, bounded per word and overall, with a score and a threshold;
5. higher-rank fallback: the species of a trinomial, the genus of a binomial, then the source's own
   hints from the most specific up (``higher_rank``). A name of several taxa (hybrid formula
   ``A x B``, alternatives ``A or B``) is never its first part: it resolves to the species its
   parts share, else to the deepest taxon that the genera of all its parts share (each genus
   settled on its own, so a homonym among them is never guessed). A binomial whose epithet is
   malformed (``crabr\ufffdo``) skips the exact and fuzzy steps and resolves above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from schemas import RANKS
from taxonomy.backbone import Backbone
from taxonomy.names import (
    ALTERNATIVES,
    HYBRID_FORMULA,
    MALFORMED_EPITHET,
    NON_LIVING,
    OTU,
    SCIENTIFIC,
    VIRUS,
    parse_names,
)

HINT_RANKS: tuple[str, ...] = RANKS[:-1]  # kingdom .. genus
HINT_COLUMNS: tuple[str, ...] = tuple(f"verbatim_{r}" for r in HINT_RANKS)
QUERY_COLUMNS: tuple[str, ...] = ("verbatim_name", *HINT_COLUMNS, "verbatim_lineage")
RESULT_COLUMNS: tuple[str, ...] = (
    "taxon_id", *RANKS, "taxon_rank", "accepted_name", "match_type", "match_score", "match_note",
    "backbone", "backbone_version", "vernacular_name", "vernacular_rank", "living",
    "non_living_class", "qualifier",
)
# unresolved reasons, first word of match_note
REASONS = ("empty_name", "placeholder", "otu", "virus", "ambiguous_homonym", "not_in_backbone")
_STATUS_PREF = {"accepted": 0, "doubtful": 1, "synonym": 2, "misapplied": 3}
_MAIN_RANKS = set(RANKS) | {"subspecies", "variety", "form", "infraspecific name", "infraspecies"}
_SEVERAL = [HYBRID_FORMULA, ALTERNATIVES]  # names of several taxa
# fallback priorities: 0 the species of a trinomial (or the one all parts share), 1 the genus (or
# the taxon the parts' genera share), then the source's hints
_GENUS_PRIO = 1


@dataclass(frozen=True)
class ResolveSettings:
    """Knobs of the resolver; the stage's ``Options`` maps onto these."""

    fuzzy: bool = True
    fuzzy_threshold: float = 0.85
    max_edit_distance: int = 2
    aff_to_genus: bool = True
    workers: int = 2


def allowed_distance(length: np.ndarray, max_edit: int) -> np.ndarray:
    """Edits allowed in a word of ``length`` letters: none up to 3, one up to 7, then ``max_edit``."""
    return np.where(length <= 3, 0, np.where(length <= 7, min(1, max_edit), max_edit))


# ----------------------------------------------------------------------------------------------
# backbone views cached per backbone


class _Index:
    """Match-side views of a backbone, built once per loaded backbone (cheap: no per-row string work
    on the whole table except splitting the keys for the fuzzy blocks, done on first need)."""

    def __init__(self, backbone: Backbone) -> None:
        t = backbone.table
        self.rows = t.with_row_index("bid").with_columns(pl.col("bid").cast(pl.Int64))
        self.match = self.rows.filter(pl.col("key").is_not_null() & pl.col("accepted_id").is_not_null()).select(
            "bid", "key")
        self.lineage = self.rows.select("bid", "status", "rank", "accepted_id", "accepted_rank", *RANKS)
        self.by_id = self.rows.select("taxon_id", "bid").unique("taxon_id", keep="first")
        self._fuzzy: pl.DataFrame | None = None
        self._words: pl.DataFrame | None = None
        self._deletes: pl.DataFrame | None = None

    def fuzzy_keys(self) -> pl.DataFrame:
        """Distinct keys split into first word ``g`` and the rest, with the block columns."""
        if self._fuzzy is None:
            keys = self.match.select("key").unique()
            parts = pl.col("key").str.splitn(" ", 2)
            self._fuzzy = keys.with_columns(
                parts.struct.field("field_0").alias("g"),
                parts.struct.field("field_1").fill_null("").alias("rest"),
                (pl.col("key").str.count_matches(" ") + 1).alias("nw"),
            ).with_columns(
                pl.col("g").str.len_chars().alias("lg"),
                pl.col("rest").str.len_chars().alias("lr"),
                pl.col("rest").str.slice(0, 1).alias("r1"),
            )
        return self._fuzzy

    def fuzzy_words(self) -> pl.DataFrame:
        """Distinct first words of the keys (genera and uninomials), for matching misspelt genera."""
        if self._words is None:
            self._words = self.fuzzy_keys().group_by("g").agg(
                pl.col("lg").first(), (pl.col("nw") == 1).any().alias("uni"))
        return self._words

    def word_deletes(self) -> pl.DataFrame:
        """Single-deletion neighbourhood of every first word (symmetric-delete blocking): two words
        within one edit share a variant, so candidate pairs are found by an equi-join."""
        if self._deletes is None:
            self._deletes = deletion_variants(self.fuzzy_words().select("g"), "g")
        return self._deletes


def deletion_variants(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """``col`` and each of its one-letter deletions, as rows (col, variant)."""
    pos = df.select(col, pl.int_ranges(0, pl.col(col).str.len_chars()).alias("_i")).explode("_i")
    dels = pos.select(col, pl.concat_str(pl.col(col).str.slice(0, pl.col("_i")),
                                         pl.col(col).str.slice(pl.col("_i") + 1)).alias("variant"))
    return pl.concat([df.select(col, pl.col(col).alias("variant")), dels.drop_nulls()]).unique()


def _index(backbone: Backbone) -> _Index:
    idx = getattr(backbone, "_resolver_index", None)
    if idx is None:
        idx = _Index(backbone)
        object.__setattr__(backbone, "_resolver_index", idx)
    return idx


# ----------------------------------------------------------------------------------------------
# settling candidates


def _settle(cands: pl.DataFrame, queries: pl.DataFrame, idx: _Index) -> pl.DataFrame:
    """Pick one taxon per group (``gid``) from candidate backbone rows, or report why not.

    ``cands``: gid, qid, bid. Returns gid, qid, target_bid, n_cand, settled (exact/synonym/common),
    common_rank, note, conflict.
    """
    if cands.height == 0:
        return pl.DataFrame(schema={"gid": pl.Int64, "qid": pl.Int64, "target_bid": pl.Int64,
                                    "kind": pl.String, "note": pl.String})
    c = cands.join(idx.lineage, on="bid", how="inner").filter(pl.col("accepted_id").is_not_null())
    c = c.with_columns(*[pl.col(r).str.to_lowercase().alias(f"_l_{r}") for r in RANKS]).join(
        queries.select("qid", *[f"h_{r}" for r in HINT_RANKS], "h_list"), on="qid", how="left")
    # hints, kingdom first: keep the candidates that agree unless none does
    for r in HINT_RANKS:
        ok = pl.col(f"h_{r}").is_null() | pl.col(f"_l_{r}").is_null() | (pl.col(f"_l_{r}") == pl.col(f"h_{r}"))
        c = c.with_columns(ok.alias("_ok")).with_columns(pl.col("_ok").sum().over("gid").alias("_n_ok"))
        c = c.filter(pl.col("_ok") | (pl.col("_n_ok") == 0))
    # the free lineage: candidates with most of their ranks in the hint list
    hits = pl.sum_horizontal([pl.col("h_list").list.contains(pl.col(f"_l_{r}")).fill_null(False).cast(pl.Int32)
                              for r in HINT_RANKS])
    c = c.with_columns(hits.alias("_hits")).filter(pl.col("_hits") == pl.col("_hits").max().over("gid"))
    c = c.with_columns(
        pl.col("status").replace_strict(_STATUS_PREF, default=4, return_dtype=pl.Int32).alias("_sp"),
        pl.when(pl.col("rank").is_in(list(_MAIN_RANKS))).then(0).otherwise(1).alias("_rp"),
    )
    c = c.filter(pl.col("_sp") == pl.col("_sp").min().over("gid"))
    c = c.filter(pl.col("_rp") == pl.col("_rp").min().over("gid"))
    c = c.sort("gid", "bid")
    per = c.group_by("gid", maintain_order=True).agg(
        pl.col("qid").first(),
        pl.col("bid").first().alias("first_bid"),
        pl.col("accepted_id").n_unique().alias("n_acc"),
        pl.col("status").first(),
        pl.col("accepted_id").unique().sort().alias("acc_ids"),
        *[pl.col(f"_l_{r}").n_unique().alias(f"_u_{r}") for r in RANKS],
        *[pl.col(f"_l_{r}").null_count().alias(f"_z_{r}") for r in RANKS],
        *[pl.col(f"_l_{r}").unique().sort().alias(f"_v_{r}") for r in ("kingdom", "phylum", "family")],
    )
    single = per.filter(pl.col("n_acc") == 1).select(
        "gid", "qid", pl.col("first_bid").alias("target_bid"),
        pl.when(pl.col("status").is_in(["synonym", "misapplied"])).then(pl.lit("synonym"))
        .otherwise(pl.lit("exact")).alias("kind"),
        pl.lit(None, dtype=pl.String).alias("note"),
    )
    multi = per.filter(pl.col("n_acc") > 1)
    if multi.height == 0:
        return single
    # deepest rank on which every candidate agrees (and is named)
    depth = pl.lit(-1)
    agree = pl.lit(True)
    for i, r in enumerate(RANKS):
        agree = agree & (pl.col(f"_u_{r}") == 1) & (pl.col(f"_z_{r}") == 0)
        depth = pl.when(agree).then(pl.lit(i)).otherwise(depth)
    multi = multi.with_columns(depth.alias("_depth"))
    family_level = RANKS.index("family")
    common = multi.filter(pl.col("_depth") >= family_level)
    homonym = multi.filter(pl.col("_depth") < family_level)
    out = [single]
    if common.height:
        # the taxon at the deepest common rank, looked up through any candidate's lineage ids
        first = idx.rows.select("bid", *[f"{r}_id" for r in RANKS])
        common = common.join(first, left_on="first_bid", right_on="bid", how="left")
        common_id = pl.lit(None, dtype=pl.String)
        for i, r in enumerate(RANKS):
            common_id = pl.when(pl.col("_depth") == i).then(pl.col(f"{r}_id")).otherwise(common_id)
        common = common.with_columns(common_id.alias("_cid")).join(
            idx.by_id, left_on="_cid", right_on="taxon_id", how="left")
        rank_name = pl.lit(None, dtype=pl.String)
        for i, r in enumerate(RANKS):
            rank_name = pl.when(pl.col("_depth") == i).then(pl.lit(r)).otherwise(rank_name)
        out.append(common.select(
            "gid", "qid", pl.col("bid").alias("target_bid"),
            pl.when(pl.col("acc_ids").list.contains(pl.col("_cid")))
            .then(pl.when(pl.col("status").is_in(["synonym", "misapplied"])).then(pl.lit("synonym"))
                  .otherwise(pl.lit("exact")))
            .otherwise(pl.lit("common")).alias("kind"),
            pl.format("{} accepted taxa ({}) share the lineage down to {}",
                      pl.col("n_acc"), pl.col("acc_ids").list.join(", "), rank_name).alias("note"),
        ))
    if homonym.height:
        where = pl.when(pl.col("_u_kingdom") > 1).then(
            pl.format("in kingdoms {}", pl.col("_v_kingdom").list.drop_nulls().list.join(", "))
        ).when(pl.col("_u_phylum") > 1).then(
            pl.format("in phyla {}", pl.col("_v_phylum").list.drop_nulls().list.join(", "))
        ).otherwise(pl.format("in families {}", pl.col("_v_family").list.drop_nulls().list.join(", ")))
        out.append(homonym.select(
            "gid", "qid", pl.lit(None, dtype=pl.Int64).alias("target_bid"), pl.lit("ambiguous").alias("kind"),
            pl.format("ambiguous_homonym: {} accepted taxa ({}) {}; give a higher-rank hint",
                      pl.col("n_acc"), pl.col("acc_ids").list.join(", "), where).alias("note"),
        ))
    return pl.concat(out, how="vertical_relaxed")


# ----------------------------------------------------------------------------------------------
# fuzzy matching


def _fuzzy(left: pl.DataFrame, idx: _Index, s: ResolveSettings) -> pl.DataFrame:
    """Best fuzzy key per query: ``left`` has qid, key. Returns qid, fkey, score, dist (ties dropped)."""
    from rapidfuzz.distance import OSA
    from rapidfuzz.process import cpdist

    empty = pl.DataFrame(schema={"qid": pl.Int64, "fkey": pl.String, "score": pl.Float64, "dist": pl.Int64})
    if left.height == 0:
        return empty
    keys = idx.fuzzy_keys()
    parts = pl.col("key").str.splitn(" ", 2)
    q = left.with_columns(
        parts.struct.field("field_0").alias("g"),
        parts.struct.field("field_1").fill_null("").alias("rest"),
        (pl.col("key").str.count_matches(" ") + 1).alias("nw"),
    ).with_columns(
        pl.col("g").str.len_chars().alias("lg"), pl.col("rest").str.len_chars().alias("lr"),
        pl.col("rest").str.slice(0, 1).alias("r1"),
    )
    words = idx.fuzzy_words()
    q = q.join(words.select("g", pl.lit(True).alias("_known")), on="g", how="left").with_columns(
        pl.col("_known").fill_null(False))
    m = s.max_edit_distance
    workers = max(1, s.workers)
    # genus words: unknown ones meet the distinct first words of the backbone through their
    # single-deletion variants (all one-edit neighbours, without comparing every pair in a block)
    unknown = q.filter(~pl.col("_known")).select("g", "lg").unique()
    gpairs = deletion_variants(unknown.select("g"), "g").join(
        idx.word_deletes().rename({"g": "g_c"}), on="variant", how="inner").select("g", "g_c").unique()
    gpairs = gpairs.join(unknown, on="g").join(words.select(pl.col("g").alias("g_c"), "uni"), on="g_c")
    if gpairs.height:
        dg = cpdist(gpairs["g"].to_list(), gpairs["g_c"].to_list(), scorer=OSA.distance, workers=workers)
        gpairs = gpairs.with_columns(pl.Series("dg", dg).cast(pl.Int64)).filter(
            pl.col("dg") <= pl.Series(allowed_distance(gpairs["lg"].to_numpy(), m)))
    else:
        gpairs = gpairs.with_columns(pl.lit(0, dtype=pl.Int64).alias("dg"))
    gpairs = gpairs.select("g", "g_c", "dg", "uni")
    known_g = q.filter(pl.col("_known")).select("g").unique().with_columns(
        pl.col("g").alias("g_c"), pl.lit(0, dtype=pl.Int64).alias("dg"), pl.lit(True).alias("uni"))
    genus_cands = pl.concat([known_g, gpairs.with_columns(pl.col("dg").cast(pl.Int64))], how="vertical_relaxed")
    # uninomials: the corrected word is the key
    uni = q.filter(pl.col("nw") == 1).join(genus_cands.filter(pl.col("uni") & (pl.col("dg") > 0)), on="g")
    uni = uni.select("qid", "key", pl.col("g_c").alias("fkey"), pl.col("dg").alias("dist"))
    # longer names: same (corrected) genus, same first letter of the epithet, near length
    qm = q.filter(pl.col("nw") > 1).join(genus_cands.select("g", "g_c", "dg"), on="g")
    qm = qm.with_columns(pl.int_ranges(pl.col("lr") - m, pl.col("lr") + m + 1).alias("_lr")).explode("_lr")
    pm = qm.join(keys.filter(pl.col("nw") > 1).select("g", "nw", "r1", "lr", pl.col("key").alias("fkey"),
                                                       pl.col("rest").alias("rest_c")),
                 left_on=["g_c", "nw", "r1", "_lr"], right_on=["g", "nw", "r1", "lr"], how="inner")
    pm = pm.filter(pl.col("key") != pl.col("fkey"))
    if pm.height:
        dr = cpdist(pm["rest"].to_list(), pm["rest_c"].to_list(), scorer=OSA.distance, workers=workers)
        pm = pm.with_columns(pl.Series("dr", dr).cast(pl.Int64)).filter(
            pl.col("dr") <= pl.Series(allowed_distance(pm["lr"].to_numpy(), m)))
        pm = pm.select("qid", "key", "fkey", (pl.col("dg") + pl.col("dr")).alias("dist"))
    else:
        pm = pm.select("qid", "key", "fkey", pl.lit(0, dtype=pl.Int64).alias("dist"))
    pairs = pl.concat([uni, pm], how="vertical_relaxed")
    if pairs.height == 0:
        return empty
    lk = np.maximum(pairs["key"].str.len_chars().to_numpy(), pairs["fkey"].str.len_chars().to_numpy())
    scored = pairs.with_columns(pl.Series("score", 1.0 - pairs["dist"].to_numpy() / np.maximum(lk, 1))).filter(
        (pl.col("dist") > 0) & (pl.col("dist") <= m) & (pl.col("score") >= s.fuzzy_threshold)
    ).select("qid", "fkey", "dist", "score")
    if scored.height == 0:
        return empty
    best = scored.filter(pl.col("dist") == pl.col("dist").min().over("qid"))
    best = best.unique(["qid", "fkey"]).with_columns(pl.len().over("qid").alias("_n"))
    ties = best.filter(pl.col("_n") > 1)
    winners = best.filter(pl.col("_n") == 1).select("qid", "fkey", "score", "dist")
    if ties.height:
        tie_notes = ties.group_by("qid").agg(pl.col("fkey").sort().str.join(" | ").alias("tie"))
        winners = pl.concat([winners, tie_notes.select(
            "qid", pl.lit(None, dtype=pl.String).alias("fkey"), pl.lit(None, dtype=pl.Float64).alias("score"),
            pl.lit(None, dtype=pl.Int64).alias("dist"), "tie")], how="diagonal_relaxed")
    return winners


# ----------------------------------------------------------------------------------------------
# the resolver


def _prepare_queries(names: pl.DataFrame) -> pl.DataFrame:
    for col in QUERY_COLUMNS:
        if col not in names.columns:
            names = names.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    q = names.select(*[pl.col(c).cast(pl.String) for c in QUERY_COLUMNS]).unique(maintain_order=True)
    q = q.with_row_index("qid").with_columns(pl.col("qid").cast(pl.Int64))
    parsed = parse_names(q["verbatim_name"]).drop("input").rename(
        {"genus": "name_genus", "epithet": "name_epithet"})
    q = pl.concat([q, parsed], how="horizontal")
    hint_list = pl.concat_list(
        pl.col("verbatim_lineage").str.to_lowercase().str.split("|").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col("parent_hint").str.to_lowercase().str.split("|").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    ).list.eval(pl.element().str.strip_chars()).list.drop_nulls()
    return q.with_columns(
        *[pl.col(f"verbatim_{r}").str.strip_chars().str.to_lowercase().alias(f"h_{r}") for r in HINT_RANKS],
        hint_list.alias("h_list"),
        pl.col("canonical").str.to_lowercase().alias("key"),
    ).with_columns(
        *[pl.when(pl.col(f"h_{r}") == "").then(None).otherwise(pl.col(f"h_{r}")).alias(f"h_{r}") for r in HINT_RANKS]
    )


def resolve_names(names: pl.DataFrame, backbone: Backbone, settings: ResolveSettings | None = None) -> pl.DataFrame:
    """Resolve the unique (name, hints) rows of ``names`` (columns from :data:`QUERY_COLUMNS`;
    missing ones are null). Returns one row per unique combination: the query columns,
    ``canonical``/``authorship``/``rank`` from the parser, and :data:`RESULT_COLUMNS`."""
    s = settings or ResolveSettings()
    idx = _index(backbone)
    q = _prepare_queries(names)
    matchable = pl.col("kind").is_in([SCIENTIFIC, OTU, VIRUS]) & pl.col("key").is_not_null()
    aff = pl.col("qualifier").fill_null("").str.contains(r"aff\.|nr\.") & pl.lit(s.aff_to_genus) \
        & pl.col("name_epithet").is_not_null()
    aff = aff | pl.col("qualifier").fill_null("").str.contains(MALFORMED_EPITHET, literal=True)
    keyed = q.filter(matchable & ~aff).select("qid", "key")

    # 2-3: exact
    exact_c = keyed.join(idx.match.select("bid", "key"), on="key", how="inner").select(
        pl.col("qid").alias("gid"), "qid", "bid")
    settled = _settle(exact_c, q, idx).with_columns(pl.lit(0).alias("stage"),
                                                    pl.lit(None, dtype=pl.Float64).alias("fscore"))
    done = settled.select("qid")

    # 4: fuzzy, only for names that had no candidate at all
    if s.fuzzy:
        left = keyed.join(done, on="qid", how="anti").join(
            q.select("qid", "kind"), on="qid").filter(pl.col("kind") == SCIENTIFIC).select("qid", "key")
        fz = _fuzzy(left, idx, s)
        if fz.height:
            hits = fz.filter(pl.col("fkey").is_not_null())
            fc = hits.join(idx.match.select("bid", "key"), left_on="fkey", right_on="key").select(
                pl.col("qid").alias("gid"), "qid", "bid")
            fs = _settle(fc, q, idx).join(hits.select("qid", "fkey", "score", "dist"), on="qid", how="left")
            fs = fs.with_columns(pl.lit(1).alias("stage"), pl.col("score").alias("fscore")).drop(
                "fkey", "score", "dist")
            settled = pl.concat([settled, fs], how="diagonal_relaxed")
            if "tie" in fz.columns:
                tie = fz.filter(pl.col("tie").is_not_null()).select("qid", pl.format("fuzzy tie: {}", "tie").alias("tie"))
                q = q.join(tie, on="qid", how="left")
    if "tie" not in q.columns:
        q = q.with_columns(pl.lit(None, dtype=pl.String).alias("tie"))
    # an ambiguous exact/fuzzy result is final: falling back would be a guess
    resolved_or_ambiguous = settled.select("qid").unique()

    # 5: higher-rank fallback from the most specific candidate name up
    words = pl.col("canonical").str.split(" ")
    several = pl.col("kind").is_in(_SEVERAL)
    no_list = pl.lit([], dtype=pl.List(pl.String))
    fb_lists = pl.concat_list(
        pl.when(~several & (words.list.len() > 2)).then(words.list.slice(0, 2).list.join(" ")).otherwise(None),
        pl.when(~several & (words.list.len() > 1)).then(pl.col("name_genus")).otherwise(None),
        pl.col("parent_hint").str.split("|").list.reverse().fill_null(no_list),
        *[pl.col(f"verbatim_{r}") for r in reversed(HINT_RANKS)],
        pl.col("verbatim_lineage").str.split("|").list.reverse().fill_null(no_list),
    )
    pending = q.filter(pl.col("kind").is_in([SCIENTIFIC, OTU, *_SEVERAL])).join(resolved_or_ambiguous, on="qid",
                                                                               how="anti")
    fallback = pending.select("qid", fb_lists.alias("fb"))
    fallback = fallback.explode("fb").with_columns(pl.int_range(pl.len()).over("qid").alias("prio"))
    fallback = pl.concat([fallback, _shared_species(pending)], how="vertical_relaxed").filter(
        pl.col("fb").is_not_null() & (pl.col("fb").str.strip_chars() != ""))
    fallback = fallback.with_columns(pl.col("fb").str.strip_chars().str.to_lowercase().alias("fkey"))
    fallback = fallback.with_columns((pl.col("qid") * 1000 + pl.col("prio")).alias("gid"))
    hc = fallback.join(idx.match.select("bid", "key"), left_on="fkey", right_on="key").select("gid", "qid", "bid")
    hs = _settle(hc, q, idx)
    fb_notes = _ambiguous_fallbacks(hs, fallback, q)
    shared, shared_notes = _shared_genus(pending, q, idx)
    hs = pl.concat([hs.filter(pl.col("target_bid").is_not_null()), shared], how="diagonal_relaxed")
    if hs.height:
        hs = hs.sort("gid").unique("qid", keep="first").with_columns(
            pl.lit(2).alias("stage"), pl.lit(None, dtype=pl.Float64).alias("fscore"))
        settled = pl.concat([settled, hs], how="diagonal_relaxed")
    # the most specific fallback that was an ambiguous homonym says why a name stays unresolved
    # (the parts' genera come before the hints)
    fb_notes = pl.concat([shared_notes, fb_notes]).unique("qid", keep="first", maintain_order=True)
    q = q.join(fb_notes, on="qid", how="left")
    return _assemble(q, settled, idx, backbone)


def _parts(pending: pl.DataFrame) -> pl.DataFrame:
    """One row per part of every name of several taxa: qid, part (canonical), its genus."""
    several = pending.filter(pl.col("kind").is_in(_SEVERAL))
    split = pl.col("canonical").str.replace_all(" or ", " × ", literal=True).str.split(" × ")
    parts = several.select("qid", split.alias("part")).explode("part")
    return parts.with_columns(pl.col("part").str.split(" ").list.first().alias("part_genus"))


def _shared_species(pending: pl.DataFrame) -> pl.DataFrame:
    """Fallback rows (qid, fb, prio 0) for names of several taxa whose parts all lie in one species
    (``Vespa crabro crabro or Vespa crabro gribodoi``)."""
    parts = _parts(pending).with_columns(pl.col("part").str.split(" ").alias("_w"))
    per = parts.group_by("qid").agg(
        (pl.col("_w").list.len() >= 2).all().alias("_two"),
        pl.col("_w").list.slice(0, 2).list.join(" ").n_unique().alias("_n"),
        pl.col("_w").list.slice(0, 2).list.join(" ").first().alias("fb"),
    )
    return per.filter(pl.col("_two") & (pl.col("_n") == 1)).select(
        "qid", "fb", pl.lit(0, dtype=pl.Int64).alias("prio"))


def _shared_genus(pending: pl.DataFrame, q: pl.DataFrame, idx: _Index) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The taxon that the genera of every part of a name of several taxa share, each genus settled
    on its own with the record's hints: (gid, qid, target_bid, kind, note) rows at the genus
    priority, and (qid, fb_note) for the names where a genus was an ambiguous homonym."""
    empty = pl.DataFrame(schema={"gid": pl.Int64, "qid": pl.Int64, "target_bid": pl.Int64, "kind": pl.String,
                                 "note": pl.String})
    no_notes = pl.DataFrame(schema={"qid": pl.Int64, "fb_note": pl.String})
    genera = _parts(pending).select("qid", pl.col("part_genus").alias("fb")).unique(maintain_order=True)
    if genera.height == 0:
        return empty, no_notes
    genera = genera.with_columns(pl.col("fb").str.to_lowercase().alias("fkey"),
                                 pl.int_range(pl.len()).alias("gid").cast(pl.Int64))
    cands = genera.join(idx.match.select("bid", "key"), left_on="fkey", right_on="key").select("gid", "qid", "bid")
    each = _settle(cands, q, idx)
    notes = _ambiguous_fallbacks(each, genera, q)
    found = genera.join(each.filter(pl.col("target_bid").is_not_null()).select("gid", "target_bid"), on="gid",
                        how="left")
    # every part's genus must be known, else the taxon they share is unknown too
    complete = found.group_by("qid").agg(pl.col("target_bid").null_count().alias("_missing"))
    found = found.join(complete.filter(pl.col("_missing") == 0).select("qid"), on="qid")
    if found.height == 0:
        return empty, notes
    ids = idx.rows.select("bid", *[f"{r}_id" for r in RANKS])
    lin = found.join(ids, left_on="target_bid", right_on="bid", how="left")
    per = lin.group_by("qid").agg(
        *[((pl.col(f"{r}_id").n_unique() == 1) & (pl.col(f"{r}_id").null_count() == 0)).alias(f"_same_{r}")
          for r in RANKS],
        *[pl.col(f"{r}_id").first().alias(f"_id_{r}") for r in RANKS],
        pl.col("fb").unique(maintain_order=True).alias("_genera"),
    )
    depth, agree = pl.lit(-1), pl.lit(True)
    for i, r in enumerate(RANKS):
        agree = agree & pl.col(f"_same_{r}")
        depth = pl.when(agree).then(pl.lit(i)).otherwise(depth)
    shared_id, shared_rank = pl.lit(None, dtype=pl.String), pl.lit(None, dtype=pl.String)
    for i, r in enumerate(RANKS):
        shared_id = pl.when(depth == i).then(pl.col(f"_id_{r}")).otherwise(shared_id)
        shared_rank = pl.when(depth == i).then(pl.lit(r)).otherwise(shared_rank)
    per = per.with_columns(shared_id.alias("_sid"), shared_rank.alias("_srank")).filter(pl.col("_sid").is_not_null())
    per = per.join(idx.by_id, left_on="_sid", right_on="taxon_id", how="inner")
    return per.select(
        (pl.col("qid") * 1000 + _GENUS_PRIO).alias("gid"), "qid", pl.col("bid").alias("target_bid"),
        pl.lit("exact").alias("kind"),
        pl.when(pl.col("_genera").list.len() > 1).then(
            pl.format("the genera {} share the {}", pl.col("_genera").list.join(", "), pl.col("_srank")))
        .otherwise(None).alias("note"),
    ), notes


def _ambiguous_fallbacks(settled: pl.DataFrame, fallback: pl.DataFrame, q: pl.DataFrame) -> pl.DataFrame:
    """(qid, fb_note) for the fallback names that were ambiguous homonyms, the most specific first:
    the reason a name that resolves nowhere else stays unresolved."""
    amb = settled.filter(pl.col("target_bid").is_null() & pl.col("note").str.starts_with("ambiguous_homonym"))
    amb = amb.join(fallback.select("gid", "fb"), on="gid", how="left").join(q.select("qid", "canonical"), on="qid")
    return amb.sort("gid").unique("qid", keep="first").select("qid", pl.format(
        "ambiguous_homonym: '{}' not matched and '{}' names {}", pl.col("canonical"), pl.col("fb"),
        pl.col("note").str.strip_prefix("ambiguous_homonym: ")).alias("fb_note"))


def _assemble(q: pl.DataFrame, settled: pl.DataFrame, idx: _Index, backbone: Backbone) -> pl.DataFrame:
    settled = settled.sort("qid", "stage").unique("qid", keep="first")
    out_cols = ["bid", "accepted_id", *RANKS, "accepted_rank", "accepted_name", "canonical",
                "vernacular_name", "vernacular_rank"]
    target = idx.rows.select(out_cols).rename({"canonical": "_t_canonical"})
    r = q.join(settled.select("qid", "target_bid", pl.col("kind").alias("settle_kind"), "note", "stage", "fscore"),
               on="qid", how="left")
    r = r.join(target, left_on="target_bid", right_on="bid", how="left")
    has = pl.col("target_bid").is_not_null()
    match_type = (
        pl.when(pl.col("kind") == NON_LIVING).then(pl.lit("non_living"))
        .when(~has).then(pl.lit("none"))
        .when(pl.col("stage") == 2).then(pl.lit("higher_rank"))
        .when(pl.col("stage") == 1).then(pl.lit("fuzzy"))
        .when(pl.col("settle_kind") == "common").then(pl.lit("higher_rank"))
        .when(pl.col("settle_kind") == "synonym").then(pl.lit("synonym"))
        .otherwise(pl.lit("exact"))
    )
    score = (
        pl.when(~has).then(None)
        .when(pl.col("stage") == 1).then(pl.col("fscore"))
        .when((pl.col("stage") == 0) & (pl.col("settle_kind") != "common")).then(pl.lit(1.0))
        .otherwise(None)
    )
    reason = (
        pl.when(pl.col("kind") == "empty").then(pl.lit("empty_name: no name given"))
        .when(pl.col("kind") == "placeholder").then(pl.lit("placeholder: not a taxon name"))
        .when(pl.col("kind") == OTU).then(pl.lit("otu: an OTU/BIN code the backbone does not hold"))
        .when(pl.col("kind") == VIRUS).then(pl.lit("virus: not in the backbone"))
        .when(pl.col("note").str.starts_with("ambiguous_homonym")).then(pl.col("note"))
        .when(pl.col("fb_note").is_not_null()).then(pl.col("fb_note"))
        .otherwise(pl.format("not_in_backbone: '{}'", pl.coalesce(pl.col("canonical"), pl.col("verbatim_name"))))
    )
    qualifiers = pl.col("qualifier").fill_null("").str.split("; ")
    several_note = (
        pl.when(pl.col("kind") == HYBRID_FORMULA)
        .then(pl.lit("hybrid formula: never one of its parents, resolved no lower than the rank they share"))
        .when(pl.col("kind") == ALTERNATIVES)
        .then(pl.lit("alternatives: one of several taxa, resolved no lower than the rank they share"))
    )
    synonym_note = pl.format("synonym '{}' -> accepted '{}'", pl.col("canonical"), pl.col("accepted_name"))
    conflicts = [
        pl.when(pl.col(f"h_{r_}").is_not_null() & pl.col(r_).is_not_null()
                & (pl.col(f"h_{r_}") != pl.col(r_).str.to_lowercase()))
        .then(pl.format("conflict: source {} '{}' vs backbone '{}'", pl.lit(r_), pl.col(f"verbatim_{r_}"), pl.col(r_)))
        for r_ in HINT_RANKS
    ]
    note_parts = [
        pl.when(pl.col("kind") == NON_LIVING).then(pl.format("non_living: {}", pl.col("non_living_class"))),
        pl.when(~has & (pl.col("kind") != NON_LIVING)).then(reason),
        pl.when(has & (pl.col("stage") == 1)).then(pl.format("fuzzy: '{}' ~ '{}'", pl.col("canonical"), pl.col("_t_canonical"))),
        pl.when(has & (pl.col("stage") == 2)).then(
            pl.format("higher_rank: '{}' not matched, resolved at {} '{}'",
                      pl.coalesce(pl.col("canonical"), pl.col("verbatim_name")), pl.col("accepted_rank"), pl.col("_t_canonical"))),
        pl.when(has & (pl.col("settle_kind") == "synonym")).then(synonym_note),
        pl.when(has).then(pl.col("note")),
        pl.when(~has).then(pl.col("tie")),
        pl.when(pl.col("qualifier").fill_null("").str.contains(r"aff\.|nr\.") & has).then(pl.lit("aff./nr.: resolved to the genus")),
        pl.when(qualifiers.list.contains("cf.") | qualifiers.list.contains("?")).then(
            pl.lit("cf./?: an uncertain identification, resolved as named")),
        pl.when(qualifiers.list.contains(MALFORMED_EPITHET)).then(
            pl.lit("malformed epithet: not a well-formed name, resolved no lower than the rank above it")),
        pl.when(has).then(several_note),
        *[pl.when(has).then(c) for c in conflicts],
    ]
    r = r.with_columns(
        match_type.alias("match_type"),
        score.alias("match_score"),
        pl.concat_str(note_parts, separator="; ", ignore_nulls=True).alias("match_note"),
        pl.col("accepted_id").alias("taxon_id"),
        pl.col("accepted_rank").alias("taxon_rank"),
        pl.lit(backbone.name).alias("backbone"),
        pl.lit(backbone.version).alias("backbone_version"),
        pl.when(pl.col("kind") == NON_LIVING).then(pl.lit(False)).when(has).then(pl.lit(True))
        .otherwise(pl.lit(None, dtype=pl.Boolean)).alias("living"),
    )
    r = r.with_columns(pl.when(pl.col("match_note") == "").then(None).otherwise(pl.col("match_note")).alias("match_note"))
    return r.select(*QUERY_COLUMNS, "canonical", "authorship", "rank", "kind", *RESULT_COLUMNS)


def resolve_table(records: pa.Table | pl.DataFrame, backbone: Backbone,
                  settings: ResolveSettings | None = None) -> pl.DataFrame:
    """Fill :data:`RESULT_COLUMNS` of every record (other columns untouched, order kept)."""
    df = records if isinstance(records, pl.DataFrame) else pl.from_arrow(records)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    present = [c for c in QUERY_COLUMNS if c in df.columns]
    qdf = df.select(present)
    resolved = resolve_names(qdf, backbone, settings)
    keys = list(QUERY_COLUMNS)
    for col in keys:
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    base = df.drop([c for c in RESULT_COLUMNS if c in df.columns])
    base = base.with_columns([pl.col(c).cast(pl.String) for c in keys])
    joined = base.join(resolved.select(*keys, *RESULT_COLUMNS), on=keys, how="left", nulls_equal=True,
                       maintain_order="left")
    extra = [c for c in QUERY_COLUMNS if c not in present]
    return joined.drop(extra) if extra else joined
