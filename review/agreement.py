"""Reviewer agreement statistics for auditors, computed from plain review records.

Choices an auditor needs to read the numbers:

- Only independent reviews are ratings. An adjudicator has seen the other reviews, so an
  adjudication (``adjudication=True``) never counts in kappa, pairwise agreement, or a
  reviewer's rates. It only adds to that reviewer's ``adjudications`` count.
- Pairwise agreement pools every pair of independent reviews of the same item:
  agreeing pairs / all pairs. An item with n reviews gives n(n-1)/2 pairs, so items with
  more reviewers weigh more. Items with one review give no pairs.
- Cohen's kappa uses the items with exactly two independent reviews. Rater A is the
  earlier review (by ``submitted_at``, then input order) and rater B the later one. The
  positions are not fixed people, so this is Cohen's kappa only as far as reviewers are
  interchangeable. Items with three or more reviews are left out.
- Fleiss' kappa needs the same number n of ratings per item. Items are grouped by n and
  each group gets its own kappa (``fleiss_groups``). The headline ``fleiss`` is the group
  with the most items (on a tie, the larger n). With n = 2, Fleiss' kappa pools both
  positions' label shares (Scott's pi), so it can differ from Cohen's kappa.
- Every rate or kappa that is undefined (nothing to count, or expected agreement 1) is
  ``None``, never NaN.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
from sklearn.metrics import cohen_kappa_score

from app.errors import ArbiterError


class InconsistentReviewsError(ArbiterError):
    """Review records contradict each other, so statistics over them cannot be trusted."""

    code = "INCONSISTENT_REVIEWS"


@dataclass(frozen=True)
class ReviewRecord:
    """One submitted review of one item, with the facts of the item it was about."""

    item_id: str
    reviewer: str
    label: str
    model_label: str
    release: int
    final_label: str | None  # None while the item is unresolved
    adjudication: bool
    submitted_at: datetime


@dataclass(frozen=True)
class FleissKappa:
    """Fleiss' kappa over the items that have exactly ``raters_per_item`` independent reviews."""

    raters_per_item: int
    items: int
    kappa: float | None


@dataclass(frozen=True)
class OverallAgreement:
    """Agreement between independent reviewers over all items with two or more reviews."""

    items: int  # items with at least two independent reviews
    pairs: int
    pairwise_agreement: float | None
    cohen_items: int  # items with exactly two independent reviews
    cohen_kappa: float | None
    fleiss: FleissKappa | None  # the largest group of fleiss_groups
    fleiss_groups: tuple[FleissKappa, ...]  # one per number of reviews, ascending


@dataclass(frozen=True)
class ReviewerAgreement:
    """How one reviewer's independent reviews compare with final labels, peers and the model."""

    reviewer: str
    reviews: int  # independent reviews
    adjudications: int
    resolved_reviews: int  # independent reviews of items that have a final label
    final_agreement: float | None
    peer_pairs: int  # (this review, another reviewer's review of the same item) pairs
    peer_agreement: float | None
    overturn_rate: float | None  # share of independent reviews whose label != model_label


@dataclass(frozen=True)
class ClassAgreement:
    """Resolved items with one final label: model accuracy and how the reviewers did."""

    label: str
    items: int
    model_accuracy: float  # share of these items where model_label == final_label
    reviews: int
    final_agreement: float | None  # share of independent reviews giving the final label
    pairs: int
    pairwise_agreement: float | None


@dataclass(frozen=True)
class ReleaseAgreement:
    """Items predicted by one release: how often reviewers overturned it and agreed."""

    release: int
    items: int
    reviews: int
    overturn_rate: float | None  # share of independent reviews whose label != model_label
    resolved_items: int
    final_overturn_rate: float | None  # share of resolved items whose final label != model's
    pairs: int
    pairwise_agreement: float | None


@dataclass(frozen=True)
class AgreementReport:
    """Every agreement statistic over one set of review records."""

    overall: OverallAgreement
    reviewers: tuple[ReviewerAgreement, ...]  # by reviewer name
    classes: tuple[ClassAgreement, ...]  # by final label
    releases: tuple[ReleaseAgreement, ...]  # by release


@dataclass(frozen=True)
class _Item:
    item_id: str
    model_label: str
    release: int
    final_label: str | None
    ratings: tuple[ReviewRecord, ...]  # independent reviews, earliest first


def summarize_agreement(records: Sequence[ReviewRecord]) -> AgreementReport:
    """Compute the overall, per-reviewer, per-class and per-release statistics."""
    return AgreementReport(
        overall=overall_agreement(records),
        reviewers=reviewer_agreement(records),
        classes=class_agreement(records),
        releases=release_agreement(records),
    )


def overall_agreement(records: Sequence[ReviewRecord]) -> OverallAgreement:
    """Pairwise agreement, Cohen's kappa and Fleiss' kappa over independent reviews."""
    items = [item for item in _group_items(records) if len(item.ratings) >= 2]
    agreeing, pairs = _pairs_in(items)
    two = [item.ratings for item in items if len(item.ratings) == 2]
    groups = _fleiss_groups(items)
    return OverallAgreement(
        items=len(items),
        pairs=pairs,
        pairwise_agreement=_rate(agreeing, pairs),
        cohen_items=len(two),
        cohen_kappa=cohen_kappa([a.label for a, _ in two], [b.label for _, b in two]),
        fleiss=max(groups, key=lambda g: (g.items, g.raters_per_item), default=None),
        fleiss_groups=groups,
    )


def reviewer_agreement(records: Sequence[ReviewRecord]) -> tuple[ReviewerAgreement, ...]:
    """Per reviewer: agreement with final labels and with peers, and model overturn rate."""
    own: dict[str, list[tuple[_Item, ReviewRecord]]] = defaultdict(list)
    for item in _group_items(records):
        for rating in item.ratings:
            own[rating.reviewer].append((item, rating))
    adjudications = Counter(r.reviewer for r in records if r.adjudication)
    names = sorted({r.reviewer for r in records})
    return tuple(_reviewer_stats(name, own[name], adjudications[name]) for name in names)


def class_agreement(records: Sequence[ReviewRecord]) -> tuple[ClassAgreement, ...]:
    """Per final label of resolved items: model accuracy and reviewer agreement."""
    by_class: dict[str, list[_Item]] = defaultdict(list)
    for item in _group_items(records):
        if item.final_label is not None:
            by_class[item.final_label].append(item)
    return tuple(_class_stats(label, items) for label, items in sorted(by_class.items()))


def release_agreement(records: Sequence[ReviewRecord]) -> tuple[ReleaseAgreement, ...]:
    """Per release: model overturn rates and pairwise reviewer agreement."""
    by_release: dict[int, list[_Item]] = defaultdict(list)
    for item in _group_items(records):
        by_release[item.release].append(item)
    return tuple(_release_stats(rel, items) for rel, items in sorted(by_release.items()))


def cohen_kappa(rater_a: Sequence[str], rater_b: Sequence[str]) -> float | None:
    """Cohen's kappa of two aligned label sequences; None when empty or when p_e = 1."""
    # p_e = 1 exactly when both raters used one and the same label; sklearn would warn.
    if len(set(rater_a) | set(rater_b)) < 2:
        return None
    return float(cohen_kappa_score(rater_a, rater_b))


def fleiss_kappa(counts: npt.ArrayLike) -> float | None:
    """Fleiss' kappa of an items x categories table of rating counts, n >= 2 per item.

    Fleiss (1971), Psychological Bulletin 76(5), 378-382: with N items and n ratings each,
    p_j = sum_i n_ij / (N n), P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean_i P_i,
    P_e = sum_j p_j^2 and kappa = (P - P_e) / (1 - P_e). None when there are no items or
    every rating is in one category (P_e = 1).
    """
    table = np.asarray(counts, dtype=np.int64)
    if table.ndim != 2 or (table < 0).any():
        raise ValueError(f"counts must be a 2-D table of non-negative counts, got {table!r}")
    if table.shape[0] == 0:
        return None
    n = int(table[0].sum())
    if n < 2 or (table.sum(axis=1) != n).any():
        raise ValueError(f"every item needs the same number n >= 2 of ratings, got {table!r}")
    p = table.sum(axis=0) / table.sum()
    if np.count_nonzero(p) < 2:
        return None
    p_items = ((table**2).sum(axis=1) - n) / (n * (n - 1))
    p_e = float((p**2).sum())
    return (float(p_items.mean()) - p_e) / (1 - p_e)


def _group_items(records: Sequence[ReviewRecord]) -> list[_Item]:
    by_item: dict[str, list[ReviewRecord]] = defaultdict(list)
    for record in records:
        by_item[record.item_id].append(record)
    return [_to_item(item_id, reviews) for item_id, reviews in by_item.items()]


def _to_item(item_id: str, reviews: list[ReviewRecord]) -> _Item:
    facts = {(r.model_label, r.release, r.final_label) for r in reviews}
    if len(facts) > 1:
        raise InconsistentReviewsError(
            f"reviews of item {item_id!r} disagree on (model_label, release, final_label): "
            f"{', '.join(sorted(map(repr, facts)))}; they must all describe the same item"
        )
    ratings = sorted((r for r in reviews if not r.adjudication), key=lambda r: r.submitted_at)
    twice = sorted(name for name, n in Counter(r.reviewer for r in ratings).items() if n > 1)
    if twice:
        raise InconsistentReviewsError(
            f"item {item_id!r} has several independent reviews by {', '.join(twice)}; "
            "pass one review per reviewer and item (the latest if a review was revised)"
        )
    first = reviews[0]
    return _Item(item_id, first.model_label, first.release, first.final_label, tuple(ratings))


def _fleiss_groups(items: Iterable[_Item]) -> tuple[FleissKappa, ...]:
    by_count: dict[int, list[_Item]] = defaultdict(list)
    for item in items:
        by_count[len(item.ratings)].append(item)
    return tuple(
        FleissKappa(n, len(group), fleiss_kappa(_count_table(group)))
        for n, group in sorted(by_count.items())
    )


def _count_table(items: Sequence[_Item]) -> npt.NDArray[np.int64]:
    categories = sorted({r.label for item in items for r in item.ratings})
    counts = [Counter(r.label for r in item.ratings) for item in items]
    return np.array([[c[label] for label in categories] for c in counts], dtype=np.int64)


def _reviewer_stats(
    name: str, own: list[tuple[_Item, ReviewRecord]], adjudications: int
) -> ReviewerAgreement:
    resolved = [r.label == item.final_label for item, r in own if item.final_label is not None]
    peers = [
        r.label == other.label
        for item, r in own
        for other in item.ratings
        if other.reviewer != name
    ]
    return ReviewerAgreement(
        reviewer=name,
        reviews=len(own),
        adjudications=adjudications,
        resolved_reviews=len(resolved),
        final_agreement=_rate(sum(resolved), len(resolved)),
        peer_pairs=len(peers),
        peer_agreement=_rate(sum(peers), len(peers)),
        overturn_rate=_rate(sum(r.label != item.model_label for item, r in own), len(own)),
    )


def _class_stats(label: str, items: list[_Item]) -> ClassAgreement:
    ratings = [r for item in items for r in item.ratings]
    agreeing, pairs = _pairs_in(items)
    return ClassAgreement(
        label=label,
        items=len(items),
        model_accuracy=sum(item.model_label == label for item in items) / len(items),
        reviews=len(ratings),
        final_agreement=_rate(sum(r.label == label for r in ratings), len(ratings)),
        pairs=pairs,
        pairwise_agreement=_rate(agreeing, pairs),
    )


def _release_stats(release: int, items: list[_Item]) -> ReleaseAgreement:
    ratings = [(item, r) for item in items for r in item.ratings]
    resolved = [item for item in items if item.final_label is not None]
    agreeing, pairs = _pairs_in(items)
    return ReleaseAgreement(
        release=release,
        items=len(items),
        reviews=len(ratings),
        overturn_rate=_rate(sum(r.label != item.model_label for item, r in ratings), len(ratings)),
        resolved_items=len(resolved),
        final_overturn_rate=_rate(
            sum(item.final_label != item.model_label for item in resolved), len(resolved)
        ),
        pairs=pairs,
        pairwise_agreement=_rate(agreeing, pairs),
    )


def _pairs_in(items: Iterable[_Item]) -> tuple[int, int]:
    """(agreeing pairs, all pairs) of independent reviews, summed over items."""
    agreeing = pairs = 0
    for item in items:
        n = len(item.ratings)
        counts = Counter(r.label for r in item.ratings).values()
        agreeing += sum(c * (c - 1) // 2 for c in counts)
        pairs += n * (n - 1) // 2
    return agreeing, pairs


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None
