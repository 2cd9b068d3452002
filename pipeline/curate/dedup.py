"""Deduplication in three layers: same source record, same photo across sources, same or near-same bytes.

Layers 1 and 2 run before download as global steps (``key_fn`` + ``decide_fn``); layer 3 runs on
the downloader's sidecar columns (``record_id, sha256, phash``) and also removes images that
appear in evaluation sets (decontamination). Every decision is independent of row order.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curate.hashing import hash_strings, order_by_hash
from pipeline.stage import StageContext, StageOutput
from schemas import Reason, empty_rejects, make_rejects
from sources.columns import per_distinct

if TYPE_CHECKING:
    from pipeline.stages.curate import Options

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_NO_PHOTO_KEY = "\x00record:"


# --- layers 1 and 2: keep the richest row of each key --------------------------------------------

def record_keys(batch: pa.Table, ctx: StageContext | None = None) -> pa.Array:
    """Layer 1 key: the record id (``source`` + source media id, hashed by the connector)."""
    return pc.fill_null(_column(batch, "record_id"), "")


def photo_keys(batch: pa.Table, ctx: StageContext | None = None) -> pa.Array:
    """Layer 2 key: the cross-source photo key; rows without one are their own group."""
    rid = pc.fill_null(_column(batch, "record_id"), "")
    return pc.coalesce(_column(batch, "photo_key"), pc.binary_join_element_wise(_NO_PHOTO_KEY, rid, ""))


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def richness(table: pa.Table) -> np.ndarray:
    """Number of non-null, non-empty fields per row: the measure of the "richest" record."""
    score = np.zeros(table.num_rows, np.int64)
    for name in table.column_names:
        col = table.column(name)
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
        if pa.types.is_dictionary(col.type):
            # whether each distinct value is non-empty, taken to the rows (no text decoded per row)
            values = col.dictionary
            text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            filled = pc.greater(pc.utf8_length(values), 0) if text else pc.is_valid(values)
            valid = pc.fill_null(pc.take(filled, col.indices), False)
        else:
            valid = pc.is_valid(col)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                valid = pc.and_(valid, pc.greater(pc.utf8_length(pc.fill_null(col, "")), 0))
        score += np.asarray(valid.to_numpy(zero_copy_only=False), np.int64)
    return score


def _fingerprint(table: pa.Table) -> np.ndarray:
    """A content hash of each row, the last tie-break between equally rich rows with equal ids."""
    texts = [pc.fill_null(pc.cast(_column(table, n), pa.string()), "\x00") for n in table.column_names]
    return hash_strings(pc.binary_join_element_wise(*texts, "\x1f"), seed="row")


def rank_duplicates(keys: pa.Array, rows: pa.Table, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order ``rows`` (which share keys) within each key: most non-null fields, then smallest
    ``record_id``, then row content. Returns, as entries of ``index``, the winner of each key, the
    other rows and the winner each of them lost to."""
    rid = pc.fill_null(_column(rows, "record_id"), "")
    # the content hash only ever breaks ties between rows with the same record id: where every
    # record id differs (photo keys after the record layer) it cannot change the order
    fp = _fingerprint(rows) if pc.count_distinct(rid).as_py() < len(rid) else np.zeros(len(rid), np.uint64)
    work = pa.table({"k": keys, "rich": pa.array(richness(rows)), "rid": rid, "fp": pa.array(fp),
                     "i": pa.array(index)})
    ordered = work.sort_by([("k", "ascending"), ("rich", "descending"), ("rid", "ascending"), ("fp", "ascending")])
    order = ordered.column("i").to_numpy()
    sorted_keys = ordered.column("k").to_numpy(zero_copy_only=False)
    first = np.ones(len(order), bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    leader = order[np.nonzero(first)[0]][np.cumsum(first) - 1]
    return order[first], order[~first], leader[~first]


def duplicate_rejects(table: pa.Table, dup_rows: np.ndarray, dup_leaders: np.ndarray, stage: str,
                      reason: Reason) -> pa.Table:
    """Reject rows for the duplicates at ``dup_rows`` of ``table``, each naming the row it lost to."""
    rids = np.asarray(pc.fill_null(_column(table, "record_id"), "").to_numpy(zero_copy_only=False), object)
    return make_rejects(rids[dup_rows].tolist(), stage, reason, [f"kept {r}" for r in rids[dup_leaders].tolist()])


def keep_richest(
    table: pa.Table, keys: pa.Array, stage: str, reason: Reason, merge_provenance: bool, ordered: bool = True
) -> StageOutput:
    """Keep one row per key: most non-null fields, then smallest ``record_id``, then row content.

    Rejected rows get ``reason`` with ``kept <record_id>`` in ``detail``; with ``merge_provenance``
    the kept row's ``extra`` JSON lists the sources and record ids it absorbed under ``merged_from``.
    Output rows come ordered by a hash of their key, whatever the input order; with
    ``ordered=False`` they keep the input order (cheaper, for callers that reorder anyway).
    """
    n = table.num_rows
    if n == 0:
        return StageOutput(table, empty_rejects())
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    codes = np.asarray(pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False), np.int64)
    size = np.bincount(codes)[codes]
    single = np.nonzero(size == 1)[0]
    multi = np.nonzero(size > 1)[0]
    winners = np.zeros(0, np.int64)
    rejects = empty_rejects()
    absorbed: tuple[np.ndarray, np.ndarray] | None = None
    if multi.size:
        # only rows that share a key need the (costlier) richness and content tie-breaks
        sub = table.take(pa.array(multi))
        sub_keys = pc.take(keys, pa.array(multi))
        winners, dup_rows, dup_leaders = rank_duplicates(sub_keys, sub, multi)
        rejects = duplicate_rejects(table, dup_rows, dup_leaders, stage, reason)
        absorbed = (dup_rows, dup_leaders)
    if not multi.size:
        return StageOutput(table, rejects) if not ordered else _reordered(table, keys)
    kept = np.concatenate([single, winners])
    if ordered:
        kept_keys = pc.take(keys, pa.array(kept))
        kept = kept[order_by_hash(hash_strings(kept_keys, seed="dedup"), kept_keys)]
        out = table.take(pa.array(kept))
    else:
        mask = np.zeros(n, bool)
        mask[kept] = True
        kept = np.nonzero(mask)[0]
        out = table.filter(pa.array(mask))
    if merge_provenance and absorbed is not None:
        out = _merge_provenance(table, out, kept, *absorbed)
    return StageOutput(out, rejects)


def _reordered(table: pa.Table, keys: pa.Array) -> StageOutput:
    order = order_by_hash(hash_strings(keys, seed="dedup"), keys)
    return StageOutput(table.take(pa.array(order)))


def _merge_provenance(table, out, kept_rows, dup_rows, dup_leaders) -> pa.Table:
    """``out`` (rows ``kept_rows`` of ``table``) with each absorbing row's ``extra`` JSON listing
    the rows it absorbed under ``merged_from`` (sorted by record id), as
    ``json.dumps(..., sort_keys=True, ensure_ascii=False)`` writes it.

    Each absorbed row's entry is written column-wise; Python touches each absorbing row once,
    to put the list into its own ``extra``.
    """
    if not len(dup_rows):
        return out
    take = pa.array(dup_rows)
    rid = pc.take(_column(table, "record_id"), take)
    entries = _text_join(
        '{"identifier": ', _json_strings(pc.take(_column(table, "identifier"), take)),
        ', "record_id": ', _json_strings(rid),
        ', "source": ', _json_strings(pc.take(_column(table, "source"), take)), "}")
    # each leader's entries, by record id (a missing one sorts as ""), then in absorbed order
    order = pa.table({"lead": pa.array(dup_leaders), "rid": pc.fill_null(rid, ""),
                      "k": pa.array(np.arange(len(dup_rows)))}).sort_by(
        [("lead", "ascending"), ("rid", "ascending"), ("k", "ascending")])
    leads = order.column("lead").combine_chunks().to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], leads[1:] != leads[:-1])))
    ends = np.append(starts[1:], len(leads))
    k = order.column("k").combine_chunks()
    grouped = pa.ListArray.from_arrays(pa.array(np.append(starts, len(leads)).astype(np.int32)),
                                       pc.take(entries, k))
    lists = _text_join("[", pc.binary_join(grouped, pa.scalar(", ", pa.large_string())), "]")
    lead_ids = leads[starts]  # ascending

    targets = np.nonzero(np.isin(kept_rows, lead_ids))[0]
    group = np.searchsorted(lead_ids, np.asarray(kept_rows)[targets])
    extra_col = _column(out, "extra").cast(pa.string())
    old = pc.take(extra_col, pa.array(targets))
    # an absorbing row without extra gets {"merged_from": [...]}, column-wise
    values = _text_join('{"merged_from": ', pc.take(lists, pa.array(group)), "}")
    has_extra = np.asarray(pc.fill_null(pc.not_equal(old, ""), False).to_numpy(zero_copy_only=False), bool)
    if has_extra.any():
        # the rest of an extra does not depend on the list: its text around the list is made
        # once per distinct extra, and the list put in between column-wise
        at = np.flatnonzero(has_extra)
        raw = pc.take(old, pa.array(at))
        template = per_distinct(_extra_template, raw)
        parts = pc.split_pattern(pc.fill_null(template, _PLACEHOLDER_JSON), _PLACEHOLDER_JSON, max_splits=1)
        joined = _text_join(pc.list_element(parts, 0), pc.take(lists, pa.array(group[at])), pc.list_element(parts, 1))
        redo = np.flatnonzero(np.asarray(pc.is_null(template).to_numpy(zero_copy_only=False), bool))
        if len(redo):
            # merged before (a curated table curated again): both lists, sorted by record id
            cols = [pc.take(pc.take(_column(table, c), take), k).to_pylist() for c in ("identifier", "record_id", "source")]
            plain = [{"identifier": i, "record_id": r, "source": s} for i, r, s in zip(*cols, strict=True)]
            rewritten = []
            for g, text in zip(group[at][redo].tolist(), pc.take(raw, pa.array(redo)).to_pylist(), strict=True):
                merged = _load_extra(text)
                previous = merged.get("merged_from", [])
                if not isinstance(previous, list):  # a source's own field of that name: kept aside
                    merged["merged_from_raw"], previous = previous, []
                merged["merged_from"] = sorted(previous + plain[starts[g]:ends[g]], key=_by_record_id)
                rewritten.append(json.dumps(merged, sort_keys=True, ensure_ascii=False))
            where = np.zeros(len(at), bool)
            where[redo] = True
            joined = pc.replace_with_mask(joined, pa.array(where), pa.array(rewritten, pa.large_string()))
        values = pc.replace_with_mask(values, pa.array(has_extra), joined)
    mask = np.zeros(out.num_rows, bool)
    mask[targets] = True
    merged_col = pc.replace_with_mask(extra_col, pa.array(mask), values.cast(pa.string()))
    idx = out.column_names.index("extra")
    return out.set_column(idx, out.schema.field("extra"), merged_col)


# stands for the merged_from list while the rest of an extra is serialised (no JSON text has it:
# a noncharacter, which json.dumps writes as itself)
_PLACEHOLDER = "\ufdd0merged_from\ufdd0"
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER, ensure_ascii=False)
# json.dumps(..., sort_keys=True, ensure_ascii=False) without building an encoder per call
_ENCODE = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode


def _extra_template(raw: str) -> str | None:
    """``raw`` extra with ``merged_from`` set to the placeholder, serialised; ``None`` when it has a
    ``merged_from`` already (or its own values hold the placeholder), which the caller merges by hand."""
    merged = _load_extra(raw)
    if "merged_from" in merged:
        return None
    merged["merged_from"] = _PLACEHOLDER
    text = _ENCODE(merged)
    return text if text.count(_PLACEHOLDER_JSON) == 1 else None


def _by_record_id(entry) -> str:
    """Sort key of a ``merged_from`` entry (one merged before may be anything JSON holds)."""
    rid = entry.get("record_id") if isinstance(entry, dict) else None
    return "" if rid is None else str(rid)


def _text_join(*parts) -> pa.Array:
    """The parts (text, or arrays of it) concatenated row by row, as large strings."""
    big = [pa.scalar(p, pa.large_string()) if isinstance(p, str) else p.cast(pa.large_string()) for p in parts]
    return pc.binary_join_element_wise(*big, pa.scalar("", pa.large_string()))


_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'


def _json_strings(a: pa.Array) -> pa.Array:
    """Each value as ``json.dumps(value, ensure_ascii=False)`` writes it (``null`` for a null):
    quoted as it is unless it holds a quote, a backslash or a control character. Large strings:
    millions of entries joined can pass the 2 GiB a string array holds."""
    a = a.cast(pa.large_string())
    quoted = pc.fill_null(_text_join('"', a, '"'), "null")
    special = np.asarray(pc.fill_null(pc.match_substring_regex(a, _NEEDS_ESCAPE), False).to_numpy(
        zero_copy_only=False), bool)
    if not special.any():
        return quoted
    at = np.flatnonzero(special)
    escaped = pa.array([json.dumps(v, ensure_ascii=False) for v in pc.take(a, pa.array(at)).to_pylist()],
                       pa.large_string())
    return pc.replace_with_mask(quoted, pa.array(special), escaped)


def _load_extra(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"extra_raw": text}
    return value if isinstance(value, dict) else {"extra_raw": value}


def decide_records(group: pa.Table, ctx: StageContext) -> StageOutput:
    """Layer 1: one row per record id (a re-ingested or twice-listed record)."""
    return keep_richest(group, record_keys(group), ctx.stage, Reason.DUPLICATE_RECORD, merge_provenance=False,
                        ordered=ctx.resources.get("ordered", True))


def decide_photos(group: pa.Table, ctx: StageContext) -> StageOutput:
    """Layer 2: one row per photo key, the richest, with the others' provenance merged in."""
    return keep_richest(group, photo_keys(group), ctx.stage, Reason.DUPLICATE_PHOTO, merge_provenance=True,
                        ordered=ctx.resources.get("ordered", True))


# --- layer 3: bytes and perceptual hashes ---------------------------------------------------------

def phash_values(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hashes as ``uint64`` plus a validity mask; accepts uint64/int64 or hex strings."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), bool)
    if pa.types.is_integer(col.type):
        raw = np.asarray(pc.fill_null(col, 0).to_numpy(zero_copy_only=False))
        # signed 64-bit columns (Parquet has no unsigned default) hold the same bits
        return (raw.astype(np.int64).view(np.uint64) if raw.dtype.kind == "i" else raw.astype(np.uint64)), valid
    values = np.zeros(len(col), np.uint64)
    for i, h in enumerate(col.to_pylist()):
        if h is None:
            continue
        try:
            values[i] = np.uint64(int(h, 16))
        except (ValueError, OverflowError):
            valid[i] = False
    return values, valid


def _blocks(threshold: int) -> list[tuple[int, int]]:
    """(shift, width) of ``threshold + 1`` disjoint bit blocks covering 64 bits."""
    m = min(threshold + 1, 64)
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def find_near_pairs(
    hashes: np.ndarray, threshold: int, others: np.ndarray | None = None, chunk: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within Hamming distance ``threshold``, without comparing all pairs.

    Pigeonhole on ``threshold + 1`` disjoint bit blocks: two hashes that differ in at most
    ``threshold`` bits agree exactly on at least one block, so only hashes sharing a block value
    are compared (sorted block keys + binary search), then the full distance is verified.
    Without ``others``: pairs ``i < j`` within ``hashes``. With ``others``: pairs
    ``(i, j)`` with ``hashes[i]`` near ``others[j]``. Returns ``(i, j, distance)`` sorted by (i, j).
    """
    hashes = np.asarray(hashes, np.uint64)
    self_join = others is None
    index = hashes if self_join else np.asarray(others, np.uint64)
    found_i, found_j = [], []
    for shift, width in _blocks(threshold):
        mask = np.uint64((1 << width) - 1)
        qkey = (hashes >> np.uint64(shift)) & mask
        ikey = (index >> np.uint64(shift)) & mask
        order = np.argsort(ikey, kind="stable")
        skey = ikey[order]
        for start in range(0, len(hashes), chunk):
            q = np.arange(start, min(start + chunk, len(hashes)))
            lo = np.searchsorted(skey, qkey[q], "left")
            hi = np.searchsorted(skey, qkey[q], "right")
            counts = hi - lo
            total = int(counts.sum())
            if total == 0:
                continue
            starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
            j = order[np.arange(total) + starts]
            i = np.repeat(q, counts)
            keep = i < j if self_join else np.ones(total, bool)
            i, j = i[keep], j[keep]
            close = _popcount(hashes[i] ^ index[j]) <= threshold
            found_i.append(i[close])
            found_j.append(j[close])
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    pair = np.unique(np.stack([i, j], axis=1), axis=0) if i.size else np.zeros((0, 2), np.int64)
    i, j = pair[:, 0], pair[:, 1]
    return i, j, _popcount(hashes[i] ^ index[j]).astype(np.int64)


def brute_force_near_pairs(hashes: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    """Reference all-pairs search (for tests and small inputs)."""
    h = np.asarray(hashes, np.uint64)
    d = _popcount(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def dedup_downloaded(
    table: pa.Table, options: Options, eval_hashes: pa.Table | None = None, stage: str = "curate"
) -> StageOutput:
    """Layer 3 over ``record_id, sha256, phash``: evaluation-set matches, same bytes, near duplicates.

    In that order, each row rejected once: ``EVAL_CONTAMINATION`` (same sha256 as, or within
    ``eval_hamming_threshold`` of, an evaluation image), ``DUPLICATE_BYTES`` (same sha256 as a kept
    row; the smallest record id is kept) and ``NEAR_DUPLICATE`` (within ``hamming_threshold`` of a
    kept row; rows are visited by record id and kept unless near an already kept one). Rows without
    hashes (failed downloads) pass through.
    """
    n = table.num_rows
    rid = np.asarray(pc.fill_null(_column(table, "record_id"), "").to_numpy(zero_copy_only=False), object)
    sha = _column(table, "sha256")
    sha_np = np.asarray(pc.fill_null(sha, "").to_numpy(zero_copy_only=False), object)
    ph, ph_valid = phash_values(table.column("phash")) if "phash" in table.column_names else (
        np.zeros(n, np.uint64), np.zeros(n, bool))
    rejected = np.zeros(n, bool)
    reasons: list[tuple[int, Reason, str]] = []

    def reject(i: int, reason: Reason, detail: str) -> None:
        rejected[i] = True
        reasons.append((i, reason, detail))

    if eval_hashes is not None and eval_hashes.num_rows:
        _decontaminate(sha_np, ph, ph_valid, eval_hashes, options, reject)

    # same bytes: visit rows by record id so the smallest id of each sha256 is kept
    order = sorted(range(n), key=lambda i: rid[i])
    kept_sha: dict[str, str] = {}
    for i in order:
        if rejected[i] or not sha_np[i]:
            continue
        if sha_np[i] in kept_sha:
            reject(i, Reason.DUPLICATE_BYTES, f"kept {kept_sha[sha_np[i]]}")
        else:
            kept_sha[sha_np[i]] = rid[i]

    if options.near_duplicates:
        live = np.nonzero(ph_valid & ~rejected)[0]
        live = live[np.argsort(rid[live], kind="stable")]
        for i, kept in _greedy_near(ph[live], rid[live], options.hamming_threshold):
            reject(int(live[i]), Reason.NEAR_DUPLICATE, f"kept {kept}")

    keep = ~rejected
    rej = make_rejects([rid[i] for i, _, _ in reasons], stage, [r for _, r, _ in reasons],
                       [d for _, _, d in reasons]) if reasons else empty_rejects()
    return StageOutput(table.filter(pa.array(keep)), rej)


def _greedy_near(values: np.ndarray, ids: np.ndarray, threshold: int) -> Iterator[tuple[int, str]]:
    """Yield ``(position, kept id)`` for rows near an earlier kept row; rows are in priority order."""
    uniq, inverse = np.unique(values, return_inverse=True)
    pi, pj, _ = find_near_pairs(uniq, threshold)
    neighbours: dict[int, list[int]] = {}
    for a, b in zip(pi.tolist(), pj.tolist(), strict=True):
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    multiplicity = np.bincount(inverse, minlength=len(uniq))
    kept_by_value: dict[int, str] = {}
    for pos in range(len(values)):
        v = int(inverse[pos])
        if multiplicity[v] == 1 and v not in neighbours:
            continue
        if v in kept_by_value:
            yield pos, kept_by_value[v]
            continue
        near = [kept_by_value[w] for w in sorted(neighbours.get(v, ())) if w in kept_by_value]
        if near:
            yield pos, min(near)
        else:
            kept_by_value[v] = ids[pos]


def _decontaminate(sha_np, ph, ph_valid, eval_hashes: pa.Table, options: Options, reject) -> None:
    eval_ids = _column(eval_hashes, "eval_id").to_pylist()
    eval_sha = {}
    for s, e in zip(_column(eval_hashes, "sha256").to_pylist(), eval_ids, strict=True):
        if s:
            eval_sha.setdefault(s, e)
    hit = np.zeros(len(sha_np), bool)
    for i, s in enumerate(sha_np):
        if s and s in eval_sha:
            reject(i, Reason.EVAL_CONTAMINATION, f"same bytes as {eval_sha[s]}")
            hit[i] = True
    if "phash" not in eval_hashes.column_names:
        return
    eph, evalid = phash_values(eval_hashes.column("phash"))
    candidates = np.nonzero(ph_valid & ~hit)[0]
    targets = np.nonzero(evalid)[0]
    if not candidates.size or not targets.size:
        return
    qi, ej, dist = find_near_pairs(ph[candidates], options.eval_hamming_threshold, others=eph[targets])
    seen = set()
    for q, e, d in zip(qi.tolist(), ej.tolist(), dist.tolist(), strict=True):
        i = int(candidates[q])
        if i not in seen:
            seen.add(i)
            reject(i, Reason.EVAL_CONTAMINATION, f"near {eval_ids[targets[e]]} (hamming {d})")


# --- hashing images, the same way as the downloader -----------------------------------------------

def _dct_rows(rows: int, n: int) -> np.ndarray:
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT8x32 = _dct_rows(8, 32)


def perceptual_hash(data: bytes) -> int:
    """64-bit pHash of encoded image bytes, the downloader's construction (``shards.image.phash``):
    32x32 bilinear greyscale, the 8x8 lowest DCT frequencies against their median (DC excluded),
    bits row-major, first bit most significant."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        grey = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    coeffs = (_DCT8x32 @ grey @ _DCT8x32.T).ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int(np.packbits(bits).view(">u8")[0])


def image_hashes(data: bytes) -> tuple[str, int]:
    """``(sha256 hex, 64-bit perceptual hash)`` of encoded image bytes, as the downloader hashes.

    Calls ``shards.image.phash`` when that module is importable, so evaluation images are hashed
    by the very function that hashed the downloads; otherwise the same construction here.
    """
    sha = hashlib.sha256(data).hexdigest()
    shared = _downloader_phash()
    if shared is None:
        return sha, perceptual_hash(data)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return sha, int(shared(im), 16)


def _downloader_phash():
    try:
        from shards import image as downloader
    except ImportError:
        return None
    fn = getattr(downloader, "phash", None)
    return fn if callable(fn) else None


def _iter_eval_images(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                yield str(p), p.read_bytes()
            elif p.suffix.lower() == ".tar" and p.is_file():
                yield from _iter_tar(p)
    elif path.suffix.lower() == ".tar":
        yield from _iter_tar(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        yield str(path), path.read_bytes()
    else:
        raise ValueError(f"evaluation set {path}: not an image folder, image or webdataset .tar shard")


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                f = tar.extractfile(member)
                if f is not None:
                    yield f"{path}:{member.name}", f.read()


def hash_eval_sets(paths: Iterable[str | Path]) -> pa.Table:
    """Hash every image of the evaluation sets (folders, images or shards): ``eval_id, sha256, phash``.

    Undecodable members keep their sha256 (exact matches still count) with a null phash.
    """
    ids, shas, phs = [], [], []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"evaluation set {path} does not exist")
        for eval_id, data in _iter_eval_images(path):
            try:
                s, h = image_hashes(data)
            except (OSError, ValueError, SyntaxError):
                s, h = hashlib.sha256(data).hexdigest(), None
            ids.append(eval_id)
            shas.append(s)
            phs.append(None if h is None else np.uint64(h))
    return pa.table({"eval_id": pa.array(ids, pa.string()), "sha256": pa.array(shas, pa.string()),
                     "phash": pa.array(phs, pa.uint64())})
