"""The per-rank heads, the loss that ignores unknown ranks, and top-k counting."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pipeline.train.model import TaxonomicClassifier, TopKCounter, taxonomic_loss  # noqa: E402
from schemas import RANKS  # noqa: E402

pytestmark = pytest.mark.train

CLASSES = {"kingdom": 2, "phylum": 3, "class": 4, "order": 5, "family": 6, "genus": 7, "species": 0}


def test_one_head_per_rank_with_classes():
    model = TaxonomicClassifier(CLASSES, width=8, stages=2)
    logits = model(torch.randn(3, 3, 32, 32))
    assert set(logits) == set(RANKS) - {"species"}
    assert {rank: t.shape for rank, t in logits.items()} == {r: (3, n) for r, n in CLASSES.items() if n}


def test_loss_ignores_unknown_ranks():
    torch.manual_seed(0)
    logits = {rank: torch.randn(4, n) for rank, n in CLASSES.items() if n}
    targets = torch.tensor(
        [
            [0, 1, 2, 3, 4, 5, -1],
            [1, -1, -1, -1, -1, -1, -1],
            [-1] * 7,
            [0, 2, 3, 4, 5, 6, -1],
        ]
    )
    total, per_rank = taxonomic_loss(logits, targets)
    expected = 0.0
    for i, rank in enumerate(RANKS):
        known = targets[:, i] >= 0
        if rank in logits and known.any():
            expected += torch.nn.functional.cross_entropy(logits[rank][known], targets[known, i]).item()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert set(per_rank) == {"kingdom", "phylum", "class", "order", "family", "genus"}
    # changing the logits of an ignored cell changes nothing
    logits["phylum"][1] += 100.0
    assert taxonomic_loss(logits, targets)[0].item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_any_known_rank_gives_a_finite_zero_loss():
    model = TaxonomicClassifier(CLASSES, width=8, stages=1)
    total, per_rank = taxonomic_loss(model(torch.randn(2, 3, 16, 16)), torch.full((2, 7), -1))
    assert per_rank == {} and total.item() == 0.0
    total.backward()  # still connected to the graph: the step is a no-op, not a crash


def test_topk_counts_known_records_only():
    counter = TopKCounter({"kingdom": 2, "genus": 7})
    logits = {
        "kingdom": torch.tensor([[2.0, 1.0], [2.0, 1.0]]),
        "genus": torch.eye(7)[[6, 0]] * 5 + torch.arange(7.0) * 0.1,
    }
    targets = torch.tensor([[0, -1, -1, -1, -1, 5, -1], [0, -1, -1, -1, -1, 1, -1]])
    counter.update(logits, targets)
    result = counter.result()
    assert result["kingdom"] == {"top1": 1.0, "top5": 1.0, "n": 2, "classes": 2}
    # record 0: argmax 6, top5 = 6,5,4,3,2 -> top5 hit on 5; record 1: argmax 0, top5 = 0,6,5,4,3 -> miss on 1
    assert result["genus"]["top1"] == 0.0 and result["genus"]["top5"] == 0.5
    assert result["species"] == {"top1": None, "top5": None, "n": 0, "classes": 0}
