import random
import re

import pytest

from core.texts.augment import (
    EDIT_TYPES,
    GRAMMAR,
    KEYBOARD_NEIGHBOURS,
    SYNTAX_CATEGORIES,
    LexicalVariant,
    generate_sentence,
    lexical_variants,
    syntax_sentences,
)

TEXT = "The young goalkeeper saved two penalties in the final minutes, and her team won the cup."


def _non_letters(text: str) -> str:
    return re.sub(r"[^\W\d_]", "", text)


# ---- lexical variants


def test_lexical_variants_are_reproducible_for_a_seed():
    assert lexical_variants(TEXT, seed=7) == lexical_variants(TEXT, seed=7)


def test_lexical_variants_differ_between_seeds():
    first, second = lexical_variants(TEXT, seed=1), lexical_variants(TEXT, seed=2)
    assert [v.text for v in first] != [v.text for v in second]


def test_lexical_variants_do_not_touch_the_global_random_state():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    lexical_variants(TEXT, seed=5)
    assert random.random() == expected


@pytest.mark.parametrize("seed", range(20))
def test_each_variant_makes_one_to_five_edits_and_differs(seed):
    variants = lexical_variants(TEXT, n_variants=6, seed=seed)
    assert len(variants) == 6
    texts = [v.text for v in variants]
    assert len(set(texts)) == 6, "variants of a long text should all differ"
    for variant in variants:
        assert isinstance(variant, LexicalVariant)
        assert variant.text != TEXT
        assert 1 <= variant.n_edits <= 5
        assert len(variant.edits) == variant.n_edits
        assert all(edit.split()[0] in EDIT_TYPES for edit in variant.edits)
        # Edits stay on letters: spaces, digits and punctuation are untouched.
        assert _non_letters(variant.text) == _non_letters(TEXT)
        assert abs(len(variant.text) - len(TEXT)) <= variant.n_edits


def test_edit_bounds_are_respected():
    for variant in lexical_variants(TEXT, n_variants=30, seed=3, min_edits=2, max_edits=3):
        assert 2 <= variant.n_edits <= 3
    counts = {v.n_edits for v in lexical_variants(TEXT, n_variants=60, seed=4)}
    assert counts == {1, 2, 3, 4, 5}


def test_all_edit_types_occur():
    kinds = {edit.split()[0] for v in lexical_variants(TEXT, n_variants=40, seed=0) for edit in v.edits}
    assert kinds == set(EDIT_TYPES)


def test_short_text_still_gets_changed_variants():
    variants = lexical_variants("Hi", n_variants=6, seed=0)
    assert len(variants) == 6
    assert all(v.text != "Hi" for v in variants)


def test_text_without_letters_and_bad_bounds_are_rejected():
    with pytest.raises(ValueError, match="letters"):
        lexical_variants("123 !?")
    with pytest.raises(ValueError, match="min_edits"):
        lexical_variants(TEXT, min_edits=3, max_edits=2)
    with pytest.raises(ValueError, match="min_edits"):
        lexical_variants(TEXT, min_edits=0)


def test_keyboard_neighbours_are_symmetric():
    for letter, near in KEYBOARD_NEIGHBOURS.items():
        assert letter not in near
        for other in near:
            assert letter in KEYBOARD_NEIGHBOURS[other]
    assert set("qwsa") <= set(KEYBOARD_NEIGHBOURS["a"] + "a") and "p" not in KEYBOARD_NEIGHBOURS["a"]


# ---- syntax sentences


def test_categories_are_exactly_the_seven_named_ones():
    assert SYNTAX_CATEGORIES == (
        "simple",
        "complex",
        "simple question",
        "complex question",
        "simple imperative",
        "complex imperative",
        "one-part",
    )
    for category in SYNTAX_CATEGORIES:
        assert f"<{category}>" in GRAMMAR


def test_each_category_yields_at_least_ten_unique_sentences():
    sentences = syntax_sentences(per_category=12, seed=0)
    assert len(sentences) == 12 * len(SYNTAX_CATEGORIES)
    for category in SYNTAX_CATEGORIES:
        texts = [s.text for s in sentences if s.category == category]
        assert len(set(texts)) == len(texts) >= 10


def test_grammar_is_rich_enough_for_larger_sets():
    sentences = syntax_sentences(per_category=100, seed=1)
    assert len({s.text for s in sentences}) == 100 * len(SYNTAX_CATEGORIES)


def test_syntax_sentences_are_reproducible():
    assert syntax_sentences(10, seed=3) == syntax_sentences(10, seed=3)
    assert syntax_sentences(10, seed=3) != syntax_sentences(10, seed=4)


def test_capitalisation_and_final_punctuation():
    for sentence in syntax_sentences(per_category=30, seed=2):
        text = sentence.text
        assert text[0].isupper(), text
        assert "  " not in text and " ," not in text and " ." not in text, text
        assert "<" not in text and "_" not in text, text
        if sentence.category.endswith("question"):
            assert text.endswith("?"), text
        elif sentence.category.endswith("imperative"):
            assert text[-1] in ".!", text
        else:
            assert text[-1] in ".!", text
            assert not text.endswith("?"), text


def test_complex_sentences_have_a_subordinate_clause():
    markers = re.compile(
        r"\b(because|when|although|after|before|while|since|until|as soon as|that|who|if|where|why|how)\b",
        re.IGNORECASE,
    )
    for sentence in syntax_sentences(per_category=30, seed=0):
        if sentence.category.startswith("complex"):
            assert markers.search(sentence.text), sentence.text


def test_one_part_sentences_are_short_and_verbless():
    verbs_of_grammar = {
        alt[0] for symbol, alts in GRAMMAR.items() if symbol.startswith("<v_") for alt in alts
    }
    for sentence in syntax_sentences(per_category=30, seed=0):
        if sentence.category == "one-part":
            words = re.findall(r"[a-z']+", sentence.text.lower())
            assert len(words) <= 7, sentence.text
            assert not verbs_of_grammar & set(words), sentence.text


def test_articles_agree_with_the_next_word():
    for sentence in syntax_sentences(per_category=50, seed=5):
        assert not re.search(r"\ba [aeiou]", sentence.text, re.IGNORECASE), sentence.text
        assert not re.search(r"\ban [^aeiou\s]", sentence.text, re.IGNORECASE), sentence.text


def test_unknown_category_fails_clearly():
    with pytest.raises(ValueError, match="unknown syntax category"):
        generate_sentence("poem", random.Random(0))
