"""Agreement statistics: textbook kappas, adjudications left out, exact hand-made numbers."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from review.agreement import (
    AgreementReport,
    ClassAgreement,
    FleissKappa,
    InconsistentReviewsError,
    OverallAgreement,
    ReleaseAgreement,
    ReviewerAgreement,
    ReviewRecord,
    fleiss_kappa,
    overall_agreement,
    summarize_agreement,
)

T0 = datetime(2025, 1, 1)

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories.
WIKIPEDIA_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]
# By hand: column sums 20, 28, 39, 21, 32 of 140 ratings, so P_e = 4170 / 140^2; the rows'
# sum_j n_ij^2 - 14 add up to 688, so P = 688 / (10 * 14 * 13).
WIKIPEDIA_P = Fraction(688, 1820)
WIKIPEDIA_P_E = Fraction(20**2 + 28**2 + 39**2 + 21**2 + 32**2, 140**2)
WIKIPEDIA_KAPPA = (WIKIPEDIA_P - WIKIPEDIA_P_E) / (1 - WIKIPEDIA_P_E)


def review(
    item: str,
    reviewer: str,
    label: str,
    *,
    model: str = "approve",
    final: str | None = None,
    release: int = 1,
    adjudication: bool = False,
    at: int = 0,
) -> ReviewRecord:
    return ReviewRecord(
        item_id=item,
        reviewer=reviewer,
        label=label,
        model_label=model,
        release=release,
        final_label=final,
        adjudication=adjudication,
        submitted_at=T0 + timedelta(minutes=at),
    )


def two_raters(a: list[str], b: list[str]) -> list[ReviewRecord]:
    """Items reviewed by ann then bob; a and b are their labels, item by item."""
    return [
        r
        for i, (la, lb) in enumerate(zip(a, b, strict=True))
        for r in (review(f"i{i}", "ann", la, at=2 * i), review(f"i{i}", "bob", lb, at=2 * i + 1))
    ]


def table_records(table: list[list[int]]) -> list[ReviewRecord]:
    """One record per rating of a subjects x categories count table."""
    out = []
    for i, row in enumerate(table):
        labels = [f"c{j}" for j, count in enumerate(row) for _ in range(count)]
        out += [review(f"s{i}", f"r{k}", label) for k, label in enumerate(labels)]
    return out


def test_fleiss_kappa_matches_the_wikipedia_example() -> None:
    kappa = fleiss_kappa(WIKIPEDIA_TABLE)

    assert kappa == pytest.approx(float(WIKIPEDIA_KAPPA), abs=1e-12)
    assert round(float(WIKIPEDIA_P), 3) == 0.378
    assert round(float(WIKIPEDIA_P_E), 3) == 0.213
    assert kappa is not None and round(kappa, 3) == 0.210


def test_fleiss_kappa_from_records_matches_the_table() -> None:
    overall = overall_agreement(table_records(WIKIPEDIA_TABLE))

    assert overall.fleiss is not None
    assert (overall.fleiss.raters_per_item, overall.fleiss.items) == (14, 10)
    assert overall.fleiss.kappa == pytest.approx(float(WIKIPEDIA_KAPPA), abs=1e-12)
    assert overall.cohen_items == 0
    assert overall.cohen_kappa is None


def test_fleiss_kappa_refuses_uneven_tables() -> None:
    with pytest.raises(ValueError, match="same number n >= 2"):
        fleiss_kappa([[2, 0], [1, 2]])
    with pytest.raises(ValueError, match="same number n >= 2"):
        fleiss_kappa([[1, 0]])


def test_cohen_kappa_equals_sklearn_on_two_raters() -> None:
    # Wikipedia's Cohen example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no gives 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15

    overall = overall_agreement(two_raters(a, b))

    assert overall.cohen_items == 50
    assert overall.cohen_kappa == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert overall.cohen_kappa == pytest.approx(0.4, abs=1e-12)
    assert overall.pairwise_agreement == 35 / 50


def test_cohen_kappa_is_one_for_perfect_agreement() -> None:
    labels = ["approve", "reject", "escalate"] * 10

    overall = overall_agreement(two_raters(labels, labels))

    assert overall.cohen_kappa == pytest.approx(1.0)
    assert overall.pairwise_agreement == 1.0


def test_cohen_kappa_is_near_zero_for_independent_raters() -> None:
    rng = random.Random(20250101)
    classes = ["approve", "reject", "escalate"]
    a = [rng.choice(classes) for _ in range(5000)]
    b = [rng.choice(classes) for _ in range(5000)]

    kappa = overall_agreement(two_raters(a, b)).cohen_kappa

    assert kappa is not None and abs(kappa) < 0.05


def test_cohen_rater_a_is_the_earlier_review_whatever_the_input_order() -> None:
    # bob reviews i0 first, so on i0 he is rater A; the result must not depend on list order.
    records = [
        review("i0", "ann", "yes", at=5),
        review("i0", "bob", "no", at=1),
        review("i1", "ann", "yes", at=2),
        review("i1", "bob", "yes", at=3),
        review("i2", "ann", "no", at=6),
        review("i2", "bob", "no", at=7),
    ]
    expected = cohen_kappa_score(["no", "yes", "no"], ["yes", "yes", "no"])

    assert overall_agreement(records).cohen_kappa == pytest.approx(expected)
    assert overall_agreement(records[::-1]).cohen_kappa == pytest.approx(expected)


def test_adjudications_are_not_ratings() -> None:
    base = two_raters(["yes", "no", "yes", "no"], ["yes", "no", "no", "no"])
    adjudicated = [
        *base,
        review("i2", "judge", "no", adjudication=True, at=100),
        review("i3", "judge", "yes", adjudication=True, at=101),
        # one independent review plus an adjudication is still a single rating
        review("solo", "ann", "yes", at=102),
        review("solo", "judge", "no", adjudication=True, at=103),
    ]

    before, after = overall_agreement(base), overall_agreement(adjudicated)

    assert after == before
    assert after.items == 4 and after.cohen_items == 4 and after.pairs == 4
    assert after.fleiss is not None and (after.fleiss.raters_per_item, after.fleiss.items) == (2, 4)


def test_mixed_review_counts_are_grouped_for_fleiss_and_left_out_of_cohen() -> None:
    records = [
        *two_raters(["yes", "no", "yes"], ["yes", "no", "no"]),
        review("t0", "ann", "yes"),
        review("t0", "bob", "yes"),
        review("t0", "cat", "no"),
    ]

    overall = overall_agreement(records)

    assert overall.items == 4
    assert overall.pairs == 3 + 3
    assert overall.pairwise_agreement == (2 + 1) / 6
    assert overall.cohen_items == 3
    assert overall.cohen_kappa == pytest.approx(
        cohen_kappa_score(["yes", "no", "yes"], ["yes", "no", "no"])
    )
    assert [(g.raters_per_item, g.items) for g in overall.fleiss_groups] == [(2, 3), (3, 1)]
    assert overall.fleiss == overall.fleiss_groups[0]


def hand_made() -> list[ReviewRecord]:
    """Five items, three reviewers and one adjudicator; the tests below count by hand."""
    return [
        # i1, release 1: model approve, final approve
        review("i1", "ann", "approve", model="approve", final="approve", at=1),
        review("i1", "bob", "approve", model="approve", final="approve", at=2),
        # i2, release 1: model approve, final reject after dan adjudicates
        review("i2", "ann", "reject", model="approve", final="reject", at=3),
        review("i2", "bob", "approve", model="approve", final="reject", at=4),
        review("i2", "dan", "reject", model="approve", final="reject", adjudication=True, at=5),
        # i3, release 1: model reject, final reject, three reviewers
        review("i3", "ann", "reject", model="reject", final="reject", at=6),
        review("i3", "bob", "reject", model="reject", final="reject", at=7),
        review("i3", "cat", "reject", model="reject", final="reject", at=8),
        # i4, release 2: model reject, unresolved
        review("i4", "ann", "approve", model="reject", release=2, at=9),
        review("i4", "cat", "reject", model="reject", release=2, at=10),
        # i5, release 2: model approve, final approve, a single review
        review("i5", "cat", "approve", model="approve", final="approve", release=2, at=11),
    ]


def test_overall_on_the_hand_made_example() -> None:
    overall = summarize_agreement(hand_made()).overall

    # pairs: i1 1 (agree), i2 1 (disagree), i3 3 (agree), i4 1 (disagree)
    assert (overall.items, overall.pairs, overall.pairwise_agreement) == (4, 6, 4 / 6)
    # rater A (ann, ann, ann) = approve, reject, approve; B (bob, bob, cat) = approve,
    # approve, reject: p_o = 1/3, p_e = 5/9, kappa = (1/3 - 5/9) / (4/9) = -1/2
    assert overall.cohen_items == 3
    assert overall.cohen_kappa == pytest.approx(-0.5)
    # Fleiss on the three 2-review items: same marginals, so also -1/2; i3 is all reject
    assert overall.fleiss is not None
    assert (overall.fleiss.raters_per_item, overall.fleiss.items) == (2, 3)
    assert overall.fleiss.kappa == pytest.approx(-0.5)
    assert overall.fleiss_groups[1] == FleissKappa(3, 1, None)


def test_per_reviewer_on_the_hand_made_example() -> None:
    reviewers = summarize_agreement(hand_made()).reviewers

    assert reviewers == (
        # ann: final 3/3 on i1-i3; peers i1 ok, i2 no, i3 ok ok, i4 no; overturns i2, i4
        ReviewerAgreement("ann", 4, 0, 3, 1.0, 5, 3 / 5, 2 / 4),
        # bob: final misses i2; peers i1 ok, i2 no, i3 ok ok; never overturns
        ReviewerAgreement("bob", 3, 0, 3, 2 / 3, 4, 3 / 4, 0.0),
        # cat: i4 unresolved; peers i3 ok ok, i4 no, i5 none
        ReviewerAgreement("cat", 3, 0, 2, 1.0, 3, 2 / 3, 0.0),
        # dan only adjudicated: no independent reviews, so no rates
        ReviewerAgreement("dan", 0, 1, 0, None, 0, None, None),
    )


def test_per_class_on_the_hand_made_example() -> None:
    classes = summarize_agreement(hand_made()).classes

    assert classes == (
        # i1, i5: model right on both; reviews ann, bob, cat all approve; one agreeing pair
        ClassAgreement("approve", 2, 1.0, 3, 1.0, 1, 1.0),
        # i2, i3: model wrong on i2; bob's i2 review misses; pairs i2 0/1, i3 3/3
        ClassAgreement("reject", 2, 0.5, 5, 4 / 5, 4, 3 / 4),
    )


def test_per_release_on_the_hand_made_example() -> None:
    releases = summarize_agreement(hand_made()).releases

    assert releases == (
        # i1-i3: only ann's i2 review overturns; final overturns on i2; pairs 1/1, 0/1, 3/3
        ReleaseAgreement(1, 3, 7, 1 / 7, 3, 1 / 3, 5, 4 / 5),
        # i4, i5: ann's i4 review overturns; only i5 resolved, model right; i4 pair disagrees
        ReleaseAgreement(2, 2, 3, 1 / 3, 1, 0.0, 1, 0.0),
    )


def no_nan(report: AgreementReport) -> bool:
    overall = report.overall
    rows = [overall, *overall.fleiss_groups, *report.reviewers, *report.classes, *report.releases]
    values = [v for row in rows for v in vars(row).values() if isinstance(v, float)]
    return not any(math.isnan(v) for v in values)


def test_no_records_give_none_not_nan() -> None:
    report = summarize_agreement([])

    assert report == AgreementReport(
        overall=OverallAgreement(0, 0, None, 0, None, None, ()),
        reviewers=(),
        classes=(),
        releases=(),
    )


def test_single_label_everywhere_gives_undefined_kappas() -> None:
    records = [*two_raters(["yes"] * 5, ["yes"] * 5), *table_records([[3, 0], [3, 0]])]

    report = summarize_agreement(records)

    assert report.overall.cohen_kappa is None  # p_e = 1
    assert [g.kappa for g in report.overall.fleiss_groups] == [None, None]
    assert report.overall.pairwise_agreement == 1.0
    assert no_nan(report)


def test_single_reviews_give_no_agreement() -> None:
    records = [review("i1", "ann", "approve", final="approve"), review("i2", "bob", "reject")]

    report = summarize_agreement(records)

    assert report.overall == OverallAgreement(0, 0, None, 0, None, None, ())
    assert report.reviewers[0].peer_agreement is None
    assert report.reviewers[1].final_agreement is None
    assert report.releases[0].pairwise_agreement is None
    assert no_nan(report)


def test_fleiss_kappa_of_an_empty_or_one_category_table_is_none() -> None:
    assert fleiss_kappa(np.zeros((0, 3))) is None
    assert fleiss_kappa([[4, 0], [4, 0]]) is None


def test_contradicting_item_facts_are_refused() -> None:
    first = review("i1", "ann", "approve", final="approve")
    second = replace(first, reviewer="bob", final_label="reject")

    with pytest.raises(InconsistentReviewsError, match="'i1' disagree"):
        summarize_agreement([first, second])


def test_two_independent_reviews_by_one_reviewer_are_refused() -> None:
    records = [review("i1", "ann", "approve", at=1), review("i1", "ann", "reject", at=2)]

    with pytest.raises(InconsistentReviewsError, match="several independent reviews by ann"):
        overall_agreement(records)
