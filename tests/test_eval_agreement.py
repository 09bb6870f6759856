"""Figure 5 agreement numbers against hand computations."""

import numpy as np
import pytest

from evalsuite.agreement import agreement_matrix, agreement_table, pairs_for, weighted_kappa


def test_matrix_and_kappa_by_hand():
    # judge, human
    pairs = [(2, 2), (2, 2), (2, 1), (1, 1), (0, 2), (1, 0)]
    m = agreement_matrix(pairs)
    assert m[2, 2] == pytest.approx(200 / 6) and m[2, 1] == pytest.approx(100 / 6)
    assert m[0, 2] == pytest.approx(100 / 6) and m.sum() == pytest.approx(100.0)
    # observed weighted disagreement: |2-1|/2 + |0-2|/2 + |1-0|/2 = 0.5 + 1 + 0.5 = 2 over 6 pairs
    # judge marginal (0,1,2) = (1,2,3)/6, human marginal = (1,2,3)/6
    # expected = sum_ij p_i q_j |i-j|/2 = (1*2*.5 + 1*3*1 + 2*1*.5 + 2*3*.5 + 3*1*1 + 3*2*.5)/36 = 14/36
    assert weighted_kappa(pairs) == pytest.approx(1 - (2 / 6) / (14 / 36))


def test_perfect_and_empty():
    assert weighted_kappa([(0, 0), (1, 1), (2, 2)]) == pytest.approx(1.0)
    assert weighted_kappa([]) is None
    assert weighted_kappa([(2, 2), (2, 2)]) is None  # no variation: kappa undefined
    assert np.all(agreement_matrix([]) == 0)
    with pytest.raises(ValueError, match="out of range"):
        agreement_matrix([(3, 1)])


def test_join_skips_failed_and_unrated():
    scores = [
        {"run": "a", "id": "x", "judge_status": "ok", "judge_logic": 2},
        {"run": "a", "id": "y", "judge_status": "failed", "judge_logic": None},
        {"run": "b", "id": "x", "judge_status": "ok", "judge_logic": 0},
    ]
    human = [
        {"run": "a", "id": "x", "lang": "en", "logic": 1},
        {"run": "a", "id": "x", "lang": "en", "logic": 2},  # second annotator: its own pair
        {"run": "a", "id": "y", "lang": "en", "logic": 2},  # judge failed
        {"run": "b", "id": "x", "lang": "fr", "logic": None},  # not rated
    ]
    assert pairs_for(human, scores, "logic") == [(2, 1), (2, 2)]
    table = {(r["criterion"], r["langs"]): r for r in agreement_table(human, scores, criteria=("logic",))}
    assert table[("logic", "en")]["n"] == 2 and table[("logic", "en")]["exact"] == 0.5
    assert table[("logic", "non_en")]["n"] == 0 and table[("logic", "non_en")]["kappa"] is None


def test_non_english_group_is_every_other_language_rated():
    scores = [{"run": "a", "id": i, "judge_status": "ok", "judge_logic": 2} for i in ("x", "y", "z")]
    human = [
        {"run": "a", "id": "x", "lang": "en", "logic": 2},
        {"run": "a", "id": "y", "lang": "de", "logic": 2},  # German: not one of the paper's languages
        {"run": "a", "id": "z", "lang": "sw", "logic": 0},
    ]
    table = {r["langs"]: r for r in agreement_table(human, scores, criteria=("logic",))}
    assert (table["en"]["n"], table["non_en"]["n"], table["non_en"]["exact"]) == (1, 2, 0.5)


def test_fasttext_language_score_uses_the_judge_scale():
    from evalsuite.agreement import fasttext_language_score, fasttext_ratings

    rows = [
        {"run": "a", "id": "x0", "lang": "fr", "lang_correct": False, "code_switch_rate": None},
        {"run": "a", "id": "x1", "lang": "fr", "lang_correct": True, "code_switch_rate": 0.25},
        {"run": "a", "id": "x2", "lang": "fr", "lang_correct": True, "code_switch_rate": 0.0},
        {"run": "a", "id": "x3", "lang": "fr", "lang_correct": True, "code_switch_rate": float("nan")},
        {"run": "a", "id": "x4", "lang": "fr", "lang_correct": None},  # empty response: nothing to read
    ]
    assert [fasttext_language_score(r) for r in rows] == [0, 1, 2, 2, None]
    assert fasttext_ratings(rows) == [
        {"run": "a", "id": f"x{i}", "lang": "fr", "language": s} for i, s in enumerate([0, 1, 2, 2])
    ]
