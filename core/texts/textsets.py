"""Text sets: tables of texts to fit and compare, built in or uploaded.

A text set is a pandas DataFrame with one row per text and the columns
- text: the text itself (unique within the set),
- group: what the text belongs to, e.g. the source text it varies or its syntax category
  (the colour and the silhouette label of the projection views),
- kind: one of KINDS, how the text was made (the marker of the projection views).

Built-in sets come from the files in data/ (written for this project) and core.texts.augment.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from core.texts.augment import lexical_variants, syntax_sentences

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
TEXTS_FILE = DATA_DIR / "texts.json"
EXAMPLES_FILE = DATA_DIR / "examples.json"

COLUMNS = ("text", "group", "kind")
KINDS = ("original", "lexical", "semantic", "syntax")
DEFAULT_GROUP = "default"
DEFAULT_KIND = "original"
SUPPORTED_EXTENSIONS = (".csv", ".jsonl", ".json", ".txt")
# Limits of one uploaded (or --file) text set. Every text is a fit of minutes on a CPU, so a set of more rows is
# a mistake (a wrong file, a whole corpus), and a file of more bytes cannot hold that many texts the models
# take. The byte cap is Streamlit's upload limit too: .streamlit/config.toml sets server.maxUploadSize to
# MAX_UPLOAD_MB, so the browser refuses a larger file before sending it (Streamlit counts 1 MB as 1024 * 1024).
MAX_ROWS = 10_000
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024

BUILTIN_SETS: dict[str, str] = {
    "variants": "12 source texts, each with 4 hand-written paraphrases and 6 lexical variants (typos etc.): "
    "132 texts.",
    "syntax": "Grammar-made sentences, 10 for each of the 7 syntax categories (simple, question...): "
    "70 texts.",
    "variants-small": "4 source texts, each with 2 paraphrases and 2 lexical variants: a quick demo "
    "(20 texts, a subset of \"variants\").",
    "variants-full": "Every built-in source text with all its paraphrases and 6 lexical variants "
    "(272 texts; not pre-fitted, fitting it on a CPU takes hours).",
}
# The sets `python -m core prefit` fits and ships in data/prefit, kept to the minimum because
# fitting is slow on a CPU. "variants-small" is a subset of "variants" and goes first, so a pre-fit that is
# stopped early still ships one complete small set.
PREFIT_SETS: tuple[str, ...] = ("variants-small", "variants", "syntax")
VARIANTS_SOURCES = 12
VARIANTS_PARAPHRASES = 4
SYNTAX_PER_CATEGORY = 10


class TextSetError(ValueError):
    """A text set file that cannot be read; the message is one line meant for the user."""


@dataclass(frozen=True)
class Example:
    """A named example text for the reconstruction demo."""

    title: str
    text: str


@dataclass(frozen=True)
class SourceText:
    """A source text of data/texts.json with its hand-written semantic paraphrases."""

    group: str
    text: str
    paraphrases: tuple[str, ...]


def _frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """A text-set frame from (text, group, kind) rows; repeated texts keep their first row."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=str)
    return frame.drop_duplicates(subset="text", keep="first").reset_index(drop=True)


@cache
def load_sources() -> tuple[SourceText, ...]:
    """The source texts of data/texts.json, in file order."""
    data = json.loads(TEXTS_FILE.read_text(encoding="utf-8"))
    return tuple(
        SourceText(group=item["group"], text=item["text"], paraphrases=tuple(item["paraphrases"]))
        for item in data["sources"]
    )


def load_examples() -> list[Example]:
    """The example texts of data/examples.json, in file order."""
    data = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))
    return [Example(title=item["title"], text=item["text"]) for item in data["examples"]]


def group_seed(group: str, seed: int = 0) -> int:
    """A seed for one group's lexical variants, stable across processes (unlike hash(), which
    Python randomises per process) so that a set, and therefore its cache keys, never changes."""
    return zlib.crc32(group.encode("utf-8")) + seed


def variants_set(
    n_sources: int | None = None,
    n_paraphrases: int | None = None,
    n_lexical: int = 6,
    seed: int = 0,
) -> pd.DataFrame:
    """Source texts (kind "original"), their paraphrases ("semantic") and lexical variants
    ("lexical"), group = the source's group. None takes all sources / all paraphrases."""
    rows: list[tuple[str, str, str]] = []
    for source in load_sources()[:n_sources]:
        rows.append((source.text, source.group, "original"))
        rows.extend((p, source.group, "semantic") for p in source.paraphrases[:n_paraphrases])
        variants = lexical_variants(source.text, n_variants=n_lexical, seed=group_seed(source.group, seed))
        rows.extend((v.text, source.group, "lexical") for v in variants)
    return _frame(rows)


def syntax_set(per_category: int = SYNTAX_PER_CATEGORY, seed: int = 0) -> pd.DataFrame:
    """Grammar-generated sentences, group = syntax category, kind "syntax"."""
    return _frame([(s.text, s.category, "syntax") for s in syntax_sentences(per_category, seed=seed)])


def builtin_set(name: str, seed: int = 0) -> pd.DataFrame:
    """The built-in text set `name` (a key of BUILTIN_SETS) as a frame with columns COLUMNS."""
    if name == "variants":
        return variants_set(n_sources=VARIANTS_SOURCES, n_paraphrases=VARIANTS_PARAPHRASES, seed=seed)
    if name == "variants-full":
        return variants_set(seed=seed)
    if name == "variants-small":
        return variants_set(n_sources=4, n_paraphrases=2, n_lexical=2, seed=seed)
    if name == "syntax":
        return syntax_set(seed=seed)
    raise ValueError(f"unknown built-in text set {name!r}; available: {', '.join(BUILTIN_SETS)}")


# --------------------------------------------------------------------------------------------------
# Uploaded files
# --------------------------------------------------------------------------------------------------


def check_size(n_bytes: int, filename: str) -> None:
    """A TextSetError when a file of ``n_bytes`` is over MAX_UPLOAD_BYTES (checked before reading it)."""
    if n_bytes > MAX_UPLOAD_BYTES:
        raise TextSetError(
            f"{filename}: the file has {n_bytes / (1024 * 1024):,.1f} MB; the limit is {MAX_UPLOAD_MB} MB "
            f"(and {MAX_ROWS:,} texts) per file")


def _check_rows(n_rows: int, filename: str) -> None:
    if n_rows > MAX_ROWS:
        raise TextSetError(f"{filename}: more than {MAX_ROWS:,} texts; the limit is {MAX_ROWS:,} rows per file "
                           "(split it into several files)")


def _decode(data: bytes | str, filename: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TextSetError(f"{filename}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                           "save it as UTF-8")
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put in front of CSV exports.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TextSetError(
            f"{filename}: cannot decode byte {data[error.start]:#04x} at position {error.start} as UTF-8; "
            "save the file as UTF-8"
        ) from None


def _shown(value: str) -> str:
    """``value`` for a one-line message: a lone surrogate (from a str upload or a JSON escape) escaped, as Streamlit
    and a UTF-8 terminal cannot show it, and a newline or another character that does not print written as its
    escape (a kind of "0\\n0" must not break the message over two lines)."""
    safe = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in safe)


def _describe_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _make_row(record: dict[str, Any], row: int, filename: str) -> tuple[str, str, str]:
    """Validate one record (column name -> value; None or "" for a missing value) of file row `row`."""
    values: dict[str, str] = {}
    for column in COLUMNS:
        value = record.get(column)
        if value is not None and not isinstance(value, str):
            raise TextSetError(
                f'{filename}: row {row}, column "{column}" must be a string, got {_describe_type(value)}'
            )
        values[column] = (value or "").strip()
        _check_encodable(values[column], f'row {row}, column "{column}"', filename)
    if not values["text"]:
        raise TextSetError(f'{filename}: empty text in row {row} (column "text")')
    kind = values["kind"].lower() or DEFAULT_KIND
    if kind not in KINDS:
        raise TextSetError(
            f'{filename}: unknown kind "{_shown(values["kind"])}" in row {row} (column "kind"); '
            f"allowed kinds: {', '.join(KINDS)}"
        )
    return values["text"], values["group"] or DEFAULT_GROUP, kind


def _check_encodable(value: str, where: str, filename: str) -> None:
    """A TextSetError for a string that is no Unicode text: a lone surrogate, which JSON's "\\udcff" escape
    can produce and which no tokenizer (nor UTF-8) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TextSetError(
            f"{filename}: {where} holds an invalid character {value[error.start]!r} (a lone surrogate, "
            f"at character {error.start + 1}); it is not Unicode text") from None


def _load_json(text: str, filename: str, line: int | None) -> Any:
    """json.loads with every failure as a one-line TextSetError (line: the file line of a JSON Lines row)."""
    where = f"on line {line}" if line is not None else "in the file"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        number = line if line is not None else error.lineno
        raise TextSetError(f"{filename}: invalid JSON on line {number}: {error.msg}") from None
    except RecursionError:
        raise TextSetError(f"{filename}: the JSON {where} is nested too deeply; a text set holds flat objects "
                           '(one per text, e.g. {"text": "...", "group": "...", "kind": "..."})') from None
    except ValueError as error:  # an integer of more digits than Python converts (its hint is for programmers)
        raise TextSetError(f"{filename}: invalid JSON {where}: {str(error).split(':')[0]}") from None


def _lines(content: str) -> list[str]:
    """The lines of a file as a text editor counts them. Not str.splitlines(), which also splits at U+2028,
    form feeds and other separators that JSON strings may hold unescaped (json.dumps(ensure_ascii=False) writes
    U+2028 as it is), so a valid JSON Lines row would break in two."""
    return _NEWLINE.split(content)


_NEWLINE = re.compile(r"\r\n|\r|\n")


def _parse_csv(content: str, filename: str) -> list[tuple[str, str, str]]:
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TextSetError(f"{filename}: empty file") from None
    except csv.Error as error:
        raise TextSetError(f"{filename}: line 1 is not valid CSV: {error}") from None
    header = [name.strip() for name in header]
    if "text" not in header:
        found = ", ".join(f'"{_shown(name)}"' for name in header)
        raise TextSetError(f'{filename}: missing column "text" in the header (line 1 has {found})')

    rows: list[tuple[str, str, str]] = []
    last_line = reader.line_num
    while True:
        # A quoted field may span lines, so a record starts on the line after the previous record ends.
        first_line = last_line + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise TextSetError(f"{filename}: row {first_line} is not valid CSV: {error}") from None
        last_line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        if len(fields) > len(header):
            raise TextSetError(
                f"{filename}: row {first_line} has {len(fields)} fields "
                f"but the header has {len(header)} columns"
            )
        rows.append(_make_row(dict(zip(header, fields)), first_line, filename))
        _check_rows(len(rows), filename)
    return rows


def _parse_json_lines(content: str, filename: str) -> list[tuple[str, str, str]]:
    stripped = content.lstrip()
    if stripped.startswith("["):
        # A whole-file JSON array of objects is accepted too; its rows are counted by array item.
        items = _load_json(content, filename, None)
        _check_rows(len(items), filename)
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        for number, line in enumerate(_lines(content), start=1):
            if not line.strip():
                continue
            numbered.append((number, _load_json(line, filename, number)))
            _check_rows(len(numbered), filename)

    rows: list[tuple[str, str, str]] = []
    for number, item in numbered:
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise TextSetError(
                f'{filename}: row {number} must be an object with a "text" key, got {_describe_type(item)}'
            )
        if "text" not in item:
            raise TextSetError(f'{filename}: missing column "text" in row {number}')
        rows.append(_make_row(item, number, filename))
    return rows


def _parse_plain_lines(content: str, filename: str) -> list[tuple[str, str, str]]:
    return [(line.strip(), DEFAULT_GROUP, DEFAULT_KIND) for line in text_lines(content, filename)]


def text_lines(data: bytes | str, filename: str) -> list[str]:
    """The non-blank lines of a plain text file as they are (``python -m core fit --file texts.txt``), with the
    checks of parse_text_set: UTF-8, at most MAX_UPLOAD_BYTES and MAX_ROWS lines. Raises TextSetError."""
    return [line for _, line in numbered_lines(data, filename)]


def numbered_lines(data: bytes | str, filename: str) -> list[tuple[int, str]]:
    """text_lines with each line's number in the file (1-based, blank lines counted), to name a bad one."""
    check_size(len(data), filename)
    content = _decode(data, filename)
    lines = []
    for number, line in enumerate(_lines(content), start=1):
        if line.strip():
            _check_encodable(line, f"line {number}", filename)
            lines.append((number, line))
            _check_rows(len(lines), filename)
    return lines


def parse_text_set(data: bytes | str, filename: str) -> pd.DataFrame:
    """Read an uploaded text set and return a frame with columns COLUMNS.

    The format follows the extension of `filename`:
    - .csv: a header row naming the columns; "text" is required, "group" and "kind" are optional,
      other columns are ignored;
    - .jsonl / .json: one JSON object per line with the same keys (a bare string is a text;
      a whole-file JSON array of objects works too);
    - .txt: one text per non-empty line.
    Missing groups become "default", missing kinds "original". Repeated texts keep their first row.
    Rows are numbered as a user counts lines in the file (the CSV header is line 1).
    A file holds at most MAX_ROWS texts and MAX_UPLOAD_BYTES bytes.

    Raises TextSetError with a one-line message naming the file, row and column at fault (or the limit).
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise TextSetError(
            f'{filename}: unsupported file type "{suffix or "(none)"}"; use {", ".join(SUPPORTED_EXTENSIONS)}'
        )
    check_size(len(data), filename)
    content = _decode(data, filename)
    if not content.strip():
        raise TextSetError(f"{filename}: empty file")
    if suffix == ".csv":
        rows = _parse_csv(content, filename)
    elif suffix == ".txt":
        rows = _parse_plain_lines(content, filename)
    else:
        rows = _parse_json_lines(content, filename)
    if not rows:
        raise TextSetError(f"{filename}: no texts found, only a header or blank lines")
    return _frame(rows)
