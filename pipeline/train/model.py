"""The hierarchical taxonomic classifier: a compact residual CNN with one linear head per rank, its
summed per-rank loss (unknown ranks ignored) and per-rank top-k counting."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from schemas import RANKS

IGNORE = -1


class ConvBlock(nn.Sequential):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (same width and resolution)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBlock(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.norm2(self.conv2(self.conv1(x))))


class TaxonomicClassifier(nn.Module):
    """Shared CNN trunk, then one head per rank with at least one class (kingdom to species).

    ``forward`` returns a dict rank -> logits [batch, classes]; ranks without classes have no head
    and no entry, and the loss treats them as unknown everywhere.
    """

    def __init__(self, num_classes: Mapping[str, int], width: int = 32, stages: int = 4):
        super().__init__()
        self.num_classes = {rank: int(num_classes.get(rank, 0)) for rank in RANKS}
        layers: list[nn.Module] = [ConvBlock(3, width, stride=2)]
        cin = width
        for i in range(stages):
            cout = width * 2**i
            layers += [ConvBlock(cin, cout, stride=1 if i == 0 else 2), ResidualBlock(cout)]
            cin = cout
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding_dim = cin
        self.heads = nn.ModuleDict({rank: nn.Linear(cin, n) for rank, n in self.num_classes.items() if n > 0})

    def forward(self, images):
        features = self.trunk(images)
        return {rank: head(features) for rank, head in self.heads.items()}


def taxonomic_loss(
    logits: Mapping[str, torch.Tensor], targets: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over ranks of the mean cross-entropy over the records that know that rank.

    ``targets`` is [batch, 7] in ``RANKS`` order with -1 for an unknown rank. A rank no record of the
    batch knows contributes 0 (``cross_entropy`` alone would return NaN for it).
    """
    total = None
    per_rank: dict[str, float] = {}
    for i, rank in enumerate(RANKS):
        if rank not in logits:
            continue
        target = targets[:, i]
        known = int((target != IGNORE).sum())
        if known == 0:
            continue
        loss = F.cross_entropy(logits[rank].float(), target, ignore_index=IGNORE, reduction="sum") / known
        per_rank[rank] = float(loss.detach())
        total = loss if total is None else total + loss
    if total is None:
        total = sum(head.sum() for head in logits.values()) * 0.0 if logits else torch.zeros(())
    return total, per_rank


class TopKCounter:
    """Accumulates per-rank top-1 / top-5 hits over the records that know the rank."""

    def __init__(self, num_classes: Mapping[str, int]):
        self.num_classes = dict(num_classes)
        self.counts = {rank: {"n": 0, "top1": 0, "top5": 0} for rank in RANKS}

    def update(self, logits: Mapping[str, torch.Tensor], targets: torch.Tensor) -> None:
        for i, rank in enumerate(RANKS):
            target = targets[:, i]
            known = target != IGNORE
            n = int(known.sum())
            if n == 0:
                continue
            self.counts[rank]["n"] += n
            if rank not in logits:
                continue
            scores = logits[rank][known].float()
            k = min(5, scores.shape[1])
            top = scores.topk(k, dim=1).indices
            hits = top == target[known].unsqueeze(1)
            self.counts[rank]["top1"] += int(hits[:, 0].sum())
            self.counts[rank]["top5"] += int(hits.any(dim=1).sum())

    def result(self) -> dict[str, dict]:
        """rank -> {top1, top5, n, classes}; accuracies are None for a rank no record knows."""
        out = {}
        for rank, c in self.counts.items():
            n = c["n"]
            out[rank] = {
                "top1": c["top1"] / n if n else None,
                "top5": c["top5"] / n if n else None,
                "n": n,
                "classes": self.num_classes.get(rank, 0),
            }
        return out
