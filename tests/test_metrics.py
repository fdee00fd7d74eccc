import pytest

from desta_edge.training.metrics import normalize_words, word_error_rate, word_errors


def test_normalization_and_word_errors():
    assert normalize_words("Set a timer for 10 minutes!") == ["set", "a", "timer", "for", "ten", "minutes"]
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "the bat sat down") == (2, 3)  # one substitution, one insertion
    assert word_errors("the cat sat", "cat") == (2, 3)
    assert word_error_rate([("a b", "a b"), ("c d", "c x")]) == 0.25
    with pytest.raises(ValueError):
        word_error_rate([("", "x")])
