"""MUSE metric definitions on hand-made strings and log-prob lists (values worked out by hand)."""

import math

import pytest

from harness_ext import metrics


def test_rouge_l_lcs_by_hand():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = the cat on the mat = 5 of 6.
    f1, recall = metrics.rouge_l("the cat sat on the mat", "the cat lay on the mat")
    assert f1 == pytest.approx(5 / 6) and recall == pytest.approx(5 / 6)
    # reference "a b c d", output "a c": LCS 2 -> P = 1, R = 1/2, F1 = 2/3.
    f1, recall = metrics.rouge_l("a b c d", "a c")
    assert recall == pytest.approx(0.5) and f1 == pytest.approx(2 / 3)


def test_rouge_l_no_stemming_and_case_folding():
    # MUSE uses use_stemmer=False: "cats" != "cat"; the tokenizer lower-cases and drops punctuation.
    assert metrics.rouge_l("cats run", "cat runs")[0] == 0.0
    assert metrics.rouge_l("The Cat!", "the cat")[0] == pytest.approx(1.0)
    assert metrics.rouge_l("something", "") == (0.0, 0.0)


def test_knowmem_prompt_exact_format():
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert metrics.knowmem_prompt(icl, "Q3?") == (
        "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: ")


@pytest.mark.parametrize("output, expected", [
    ("Paris\n\nQuestion: next", "Paris"),
    ("Paris\nQuestion: next", "Paris"),
    ("Paris Question: next", "Paris "),
    ("Elda Mirrow, the mayor", "Elda Mirrow, the mayor"),
    ("\n\nstarts with a stop", ""),
])
def test_knowmem_cut(output, expected):
    assert metrics.knowmem_cut(output) == expected


def test_mink_score_by_hand():
    logp = [-1, -2, -3, -4, -5, -0.5, -0.1, -6, -2.5, -0.2]
    # n = 10 -> k = int(4.0) = 4 lowest: -6, -5, -4, -3 -> mean -4.5 -> score 4.5
    assert metrics.mink_score(logp) == pytest.approx(4.5)
    # n = 7 -> k = int(2.8) = 2 lowest of [-1, -7, -2, -3, -0.5, -9, -4] are -9, -7 -> 8.0
    assert metrics.mink_score([-1, -7, -2, -3, -0.5, -9, -4]) == pytest.approx(8.0)
    # n = 2 -> int(0.8) = 0: MUSE would give NaN; we take the single lowest value.
    assert metrics.mink_score([-1.0, -3.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        metrics.mink_score([])


def test_auc_and_privleak_by_hand():
    # forget (0) scores 1, 3; holdout (1) scores 2, 4. AUC over -score: of the 4 (holdout, forget)
    # pairs only (-2 > -3) ranks holdout higher -> 1/4.
    auc = metrics.mink_auc([1, 3, 2, 4], [0, 0, 1, 1])
    assert auc == pytest.approx(0.25)
    assert metrics.privleak(auc, 0.5) == pytest.approx(-50.0)
    # a model that memorised the forget set: forget texts have low scores -> AUC 0 -> -100 %.
    assert metrics.mink_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 0.0
    assert metrics.privleak(0.4772, 0.4772) == 0.0
    assert math.isnan(metrics.mink_auc([1, 2], [0, 0]))


def test_retrain_auc_constants_are_muse_table():
    assert metrics.AUC_RETRAIN == {"news": 0.4772, "books": 0.5393}
