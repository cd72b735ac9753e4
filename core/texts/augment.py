"""Text augmentation for the semantic-vs-syntactic probe (docs/science.md, B.1).

Two generators, both deterministic for a seed and independent of the global random state:

- `lexical_variants` makes character-level corruptions of a text (typos, swaps, deletions,
  insertions, repeated letters; 1-5 edits each), the "lexical" markers of the t-SNE views.
- `syntax_sentences` expands a small context-free grammar (`GRAMMAR`) into sentences of the seven
  categories in `SYNTAX_CATEGORIES`, the "syntax" probe.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------
# Lexical variants
# --------------------------------------------------------------------------------------------------

EDIT_TYPES = ("typo", "swap", "deletion", "insertion", "repeat")

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Letters adjacent on a QWERTY keyboard: same row left/right, and the rows above and below.

    The rows are staggered by roughly half a key, so key i of a row touches keys i and i+1 of the
    row above and keys i-1 and i of the row below.
    """
    neighbours: dict[str, set[str]] = {letter: set() for row in _KEYBOARD_ROWS for letter in row}
    for r, row in enumerate(_KEYBOARD_ROWS):
        for i, letter in enumerate(row):
            candidates = [(r, i - 1), (r, i + 1), (r - 1, i), (r - 1, i + 1), (r + 1, i - 1), (r + 1, i)]
            for rr, ii in candidates:
                if 0 <= rr < len(_KEYBOARD_ROWS) and 0 <= ii < len(_KEYBOARD_ROWS[rr]):
                    neighbours[letter].add(_KEYBOARD_ROWS[rr][ii])
    return {letter: "".join(sorted(near)) for letter, near in neighbours.items()}


KEYBOARD_NEIGHBOURS: dict[str, str] = _keyboard_neighbours()


@dataclass(frozen=True)
class LexicalVariant:
    """A character-level corruption of a source text.

    text: the corrupted text.
    edits: one human-readable line per edit, in the order applied, e.g. "typo 'a'->'s' in 'water'".
    n_edits: how many edits were applied (len(edits)), between the requested min and max.
    """

    text: str
    edits: list[str]
    n_edits: int


def _same_case(letter: str, like: str) -> str:
    return letter.upper() if like.isupper() else letter


def _word_around(chars: list[str], position: int) -> str:
    start = position
    while start > 0 and chars[start - 1].isalpha():
        start -= 1
    end = position
    while end < len(chars) and chars[end].isalpha():
        end += 1
    return "".join(chars[start:end])


def _apply_edit(chars: list[str], kind: str, rng: random.Random) -> str | None:
    """Apply one edit of `kind` in place on a random letter; return its description, or None if
    the text offers no place for this kind of edit (e.g. no two different adjacent letters to swap)."""
    if kind == "typo":
        places = [i for i, c in enumerate(chars) if c.lower() in KEYBOARD_NEIGHBOURS]
    elif kind == "swap":
        places = [
            i
            for i in range(len(chars) - 1)
            if chars[i].isalpha() and chars[i + 1].isalpha() and chars[i] != chars[i + 1]
        ]
    elif kind == "deletion":
        # Never delete a one-letter word: that would remove a word, not misspell it.
        places = [
            i
            for i, c in enumerate(chars)
            if c.isalpha()
            and ((i > 0 and chars[i - 1].isalpha()) or (i + 1 < len(chars) and chars[i + 1].isalpha()))
        ]
    else:
        places = [i for i, c in enumerate(chars) if c.isalpha()]
    if not places:
        return None

    i = rng.choice(places)
    word = _word_around(chars, i)
    old = chars[i]
    if kind == "typo":
        new = _same_case(rng.choice(KEYBOARD_NEIGHBOURS[old.lower()]), old)
        chars[i] = new
        return f"typo {old!r}->{new!r} in {word!r}"
    if kind == "swap":
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return f"swap {old + chars[i]!r}->{chars[i] + old!r} in {word!r}"
    if kind == "deletion":
        del chars[i]
        return f"deletion of {old!r} in {word!r}"
    if kind == "insertion":
        new = _same_case(rng.choice(string.ascii_lowercase), old)
        # Inserting after the chosen letter keeps the new letter inside the word.
        chars.insert(i + 1, new)
        return f"insertion of {new!r} after {old!r} in {word!r}"
    if kind == "repeat":
        chars.insert(i + 1, old)
        return f"repeat of {old!r} in {word!r}"
    raise ValueError(f"unknown edit type {kind!r}; valid types: {', '.join(EDIT_TYPES)}")


def _corrupt(text: str, n_edits: int, rng: random.Random) -> LexicalVariant:
    chars = list(text)
    edits: list[str] = []
    while len(edits) < n_edits:
        kinds = list(EDIT_TYPES)
        rng.shuffle(kinds)
        for kind in kinds:
            description = _apply_edit(chars, kind, rng)
            if description is not None:
                edits.append(description)
                break
    return LexicalVariant(text="".join(chars), edits=edits, n_edits=len(edits))


def lexical_variants(
    text: str,
    n_variants: int = 6,
    seed: int = 0,
    min_edits: int = 1,
    max_edits: int = 5,
) -> list[LexicalVariant]:
    """`n_variants` character-level corruptions of `text`, each with a random number of edits in
    [min_edits, max_edits], applied only to letters of words (spaces, digits and punctuation stay).

    Every variant differs from `text`, and the variants differ from each other unless the text is
    too short to allow that many distinct corruptions. The same (text, seed) gives the same list.
    Raises ValueError if the text has no letters or the edit bounds are inconsistent.
    """
    if n_variants < 0:
        raise ValueError(f"n_variants must be >= 0, got {n_variants}")
    if not 1 <= min_edits <= max_edits:
        raise ValueError(
            f"need 1 <= min_edits <= max_edits, got min_edits={min_edits}, max_edits={max_edits}"
        )
    if not any(c.isalpha() for c in text):
        raise ValueError("cannot make lexical variants of a text without letters")

    rng = random.Random(seed)
    variants: list[LexicalVariant] = []
    seen = {text}
    # Edits can cancel out (a swap undone by a later swap), and a very short text has few distinct
    # corruptions: retry a bounded number of times, then accept a repeat rather than loop forever.
    attempts_before_repeat = 50
    for _ in range(n_variants):
        attempt = 0
        while True:
            variant = _corrupt(text, rng.randint(min_edits, max_edits), rng)
            if variant.text != text and (variant.text not in seen or attempt >= attempts_before_repeat):
                break
            attempt += 1
        seen.add(variant.text)
        variants.append(variant)
    return variants


# --------------------------------------------------------------------------------------------------
# Syntax-category sentences
# --------------------------------------------------------------------------------------------------

SYNTAX_CATEGORIES = (
    "simple",
    "complex",
    "simple question",
    "complex question",
    "simple imperative",
    "complex imperative",
    "one-part",
)


@dataclass(frozen=True)
class SyntaxSentence:
    """A generated sentence and its syntax category (one of SYNTAX_CATEGORIES)."""

    text: str
    category: str


def _words(text: str) -> tuple[tuple[str, ...], ...]:
    """Alternatives written as a space-separated string, each becoming a one-terminal production.
    Multi-word alternatives use '_' for their inner spaces ("as_soon_as")."""
    return tuple((word.replace("_", " "),) for word in text.split())


# Nonterminals are written in angle brackets; anything else is a terminal. Each nonterminal maps to
# its alternatives, each a sequence of symbols. Past tense in main clauses sidesteps subject-verb
# agreement; present-tense clauses (after imperatives) only ever have singular subjects.
GRAMMAR: dict[str, tuple[tuple[str, ...], ...]] = {
    # ---- start symbols, one per category
    "<simple>": (
        ("<subject>", "<vp_past>", "."),
        ("<subject>", "<vp_past>", "<time>", "."),
        ("<time_front>", ",", "<subject>", "<vp_past>", "."),
        ("<subject>", "<v_intrans_past>", "<place>", "."),
        ("<subject>", "<v_intrans_past>", "<time>", "."),
        ("<thing_np>", "<place>", "was", "<thing_state>", "."),
    ),
    "<complex>": (
        ("<subject>", "<vp_past>", "<conj>", "<past_clause>", "."),
        ("<conj_front>", "<past_clause>", ",", "<subject>", "<vp_past>", "."),
        ("<subject>", "<v_trans_past>", "<thing_np>", "that", "<subject>", "<v_trans_past>", "<time>", "."),
        ("<person_np>", "who", "<vp_past>", "<v_intrans_past>", "<time>", "."),
        ("<subject>", "<v_know_past>", "that", "<past_clause>", "."),
        ("<subject>", "<v_intrans_past>", "<conj>", "<past_clause>", "."),
    ),
    "<simple question>": (
        ("did", "<subject>", "<vp_base>", "?"),
        ("<wh>", "did", "<subject>", "<vp_base>", "?"),
        ("who", "<vp_past>", "?"),
        ("what", "did", "<subject>", "<v_trans_base>", "<time>", "?"),
        ("<modal>", "<subject>", "<vp_base>", "?"),
        ("is", "<thing_np>", "<thing_state>", "?"),
    ),
    "<complex question>": (
        ("did", "<subject>", "<vp_base>", "<conj>", "<past_clause>", "?"),
        ("<wh>", "did", "<subject>", "<vp_base>", "<conj>", "<past_clause>", "?"),
        ("do", "you", "know", "<wh>", "<subject>", "<vp_past>", "?"),
        ("do", "you", "remember", "<thing_np>", "that", "<subject>", "<v_trans_past>", "?"),
        ("is", "it", "true", "that", "<past_clause>", "?"),
        ("<modal>", "<subject>", "<vp_base>", "<conj_present>", "<present_clause>", "?"),
        ("who", "<v_trans_past>", "<thing_np>", "that", "<subject>", "<v_trans_past>", "?"),
    ),
    "<simple imperative>": (
        ("<vp_base>", "<end_imperative>"),
        ("please", "<vp_base>", "<end_imperative>"),
        ("<v_trans_base>", "<thing_np>", "<place>", "<end_imperative>"),
        ("don't", "<vp_base>", "!"),
        ("<short_command>", "<end_imperative>"),
        ("never", "<v_trans_base>", "<thing_np>", "again", "!"),
    ),
    "<complex imperative>": (
        ("<vp_base>", "<conj_present>", "<present_clause>", "<end_imperative>"),
        ("please", "<vp_base>", "<conj_present>", "<present_clause>", "."),
        ("if", "<present_clause>", ",", "<vp_base>", "<end_imperative>"),
        ("<v_trans_base>", "<thing_np>", "that", "<subject>", "<v_trans_past>", "<end_imperative>"),
        ("tell", "me", "<wh>", "<subject>", "<vp_past>", "."),
        ("<short_command>", "<conj_present>", "<present_clause>", "<end_imperative>"),
    ),
    "<one-part>": (
        ("<lone_noun>", "<end_one_part>"),
        ("a", "<scene_adj>", "<season>", "<time_of_day>", "."),
        ("<scene_noun>", "<scene_prep>", "the", "<place_adj>", "<scene_place>", "."),
        ("what", "a", "<scene_adj>", "<time_of_day>", "!"),
        ("<pair>", "."),
        ("no", "<absent_thing>", "."),
        ("<season>", "<time_of_day>", "<scene_prep>", "the", "<scene_place>", "."),
    ),
    # ---- clauses and phrases
    "<past_clause>": (
        ("<subject>", "<vp_past>"),
        ("<subject>", "<v_intrans_past>", "<place>"),
        ("<event_past>",),
        ("it", "was", "<weather_state>"),
    ),
    "<present_clause>": (
        ("<event_present>",),
        ("the", "<bell_like>", "<v_sound_present>"),
        ("<person_sg_np>", "<v_arrive_present>"),
        ("it", "gets", "<weather_state>"),
    ),
    "<vp_past>": (
        ("<v_trans_past>", "<thing_np>"),
        ("<v_trans_past>", "<thing_np>", "<place>"),
    ),
    "<vp_base>": (
        ("<v_trans_base>", "<thing_np>"),
        ("<v_trans_base>", "<thing_np>", "<manner>"),
    ),
    "<subject>": (("<person_np>",), ("<name>",), ("<pronoun>",)),
    "<person_np>": (("<person_sg_np>",), ("the", "<person_pl>"), ("the", "<person_adj>", "<person_pl>")),
    "<person_sg_np>": (
        ("the", "<person_sg>"),
        ("the", "<person_adj>", "<person_sg>"),
        ("<possessive>", "<kin>"),
    ),
    "<thing_np>": (
        ("<determiner>", "<thing>"),
        ("<determiner>", "<thing_adj>", "<thing>"),
        ("<determiner>", "<thing>", "<location>"),
    ),
    # Recursive: "under the table near the window by the door"; the depth limit keeps it short.
    "<location>": (
        ("<thing_prep>", "the", "<furniture>"),
        ("<thing_prep>", "the", "<furniture>", "<location>"),
    ),
    "<place>": (
        ("<place_prep>", "the", "<place_noun>"),
        ("<place_prep>", "the", "<place_adj>", "<place_noun>"),
    ),
    "<event_past>": (
        ("the", "<weather_noun>", "<v_weather_past>"),
        ("the", "<transport>", "<v_transport_past>"),
        ("the", "<schedule>", "<v_schedule_past>"),
    ),
    "<event_present>": (
        ("the", "<weather_noun>", "<v_weather_present>"),
        ("the", "<transport>", "<v_transport_present>"),
        ("the", "<schedule>", "<v_schedule_present>"),
    ),
    # ---- word classes
    "<determiner>": _words("the the a my our their that this"),
    "<pronoun>": _words("she he they we I"),
    "<possessive>": _words("my our your her his their"),
    "<name>": _words("Anna Tom Maria Oliver Leila Sam Ivan Grace Kofi Mei"),
    "<person_sg>": _words(
        "fisherman teacher baker farmer nurse pilot painter gardener student neighbour sailor "
        "librarian carpenter doctor musician shepherd postman engineer stranger"
    ),
    "<person_pl>": _words(
        "children tourists farmers students neighbours sailors musicians twins guests builders"
    ),
    "<kin>": _words("grandmother brother sister cousin neighbour uncle aunt friend"),
    "<person_adj>": _words("old young tired clever quiet careful cheerful nervous patient curious"),
    "<thing>": _words(
        "letter key boat lamp basket map book bicycle painting fence coat umbrella "
        "bottle clock ladder kettle blanket envelope suitcase violin photograph box candle"
    ),
    "<thing_adj>": _words("old small heavy broken red wooden new dusty shiny blue rusty tiny strange green"),
    "<thing_state>": _words("broken heavy empty ready open clean locked missing wet finished"),
    "<thing_prep>": _words("under near behind beside on_top_of next_to"),
    "<furniture>": _words("table bed shelf stairs sofa desk sink cupboard window door stove"),
    "<v_trans_past>": _words(
        "found repaired painted carried opened lost sold bought cleaned hid borrowed dropped forgot "
        "noticed wrapped moved brought"
    ),
    "<v_trans_base>": _words(
        "find repair paint carry open sell buy clean hide borrow drop forget wrap move bring check"
    ),
    "<v_intrans_past>": _words(
        "slept laughed waited sang disappeared arrived left shouted smiled hesitated returned"
    ),
    "<v_know_past>": _words("knew noticed said remembered forgot heard explained"),
    "<v_weather_past>": _words("started stopped"),
    "<v_weather_present>": _words("starts stops"),
    "<v_transport_past>": _words("arrived left"),
    "<v_transport_present>": _words("arrives leaves"),
    "<v_schedule_past>": _words("started ended began"),
    "<v_schedule_present>": _words("starts ends begins"),
    "<v_arrive_present>": _words("arrives leaves calls returns wakes_up"),
    "<v_sound_present>": _words("rings"),
    "<bell_like>": _words("bell phone alarm doorbell"),
    "<weather_noun>": _words("rain storm snow wind music noise"),
    "<transport>": _words("train bus ferry tram"),
    "<schedule>": _words("film concert meeting lesson market"),
    "<weather_state>": _words("late dark cold windy quiet"),
    "<time>": _words("yesterday last_night this_morning on_Sunday after_lunch at_dawn in_the_evening"),
    "<time_front>": _words("yesterday last_night this_morning on_Sunday after_lunch at_dawn"),
    "<manner>": _words("quickly carefully slowly quietly again"),
    "<wh>": _words("where why when how"),
    "<modal>": _words("can could will should"),
    "<conj>": _words("because when although after before while since as_soon_as"),
    "<conj_front>": _words("when although after before because while"),
    "<conj_present>": _words("when before after as_soon_as until"),
    "<place_prep>": _words("in near behind at by outside"),
    "<place_noun>": _words("garden harbour barn station river square kitchen market village bridge"),
    "<short_command>": _words("wait_here sit_down listen_carefully come_inside stay_calm look_up hurry_up"),
    "<end_imperative>": _words(". !"),
    "<end_one_part>": _words(". !"),
    "<lone_noun>": _words(
        "silence darkness midnight autumn rain snow fire dawn home nonsense spring thunder"
    ),
    "<scene_noun>": _words("night silence rain snow fog music laughter smoke morning dust wind"),
    "<scene_prep>": _words("on over in across along"),
    "<scene_adj>": _words("cold quiet grey bright windy long warm lazy foggy misty"),
    "<place_adj>": _words("empty quiet grey foggy crowded sunny old narrow misty busy"),
    "<scene_place>": _words("street harbour valley hill square station field city rooftops road"),
    "<pair>": _words(
        "wind_and_rain smoke_and_ashes salt_and_pepper sun_and_sea fog_and_silence bread_and_cheese "
        "dust_and_noise stars_and_frost"
    ),
    "<season>": _words("winter summer spring autumn"),
    "<time_of_day>": _words("morning evening night afternoon day"),
    "<absent_thing>": _words("answer luck news way_out time sound"),
}

# The expansion depth (start symbol = depth 0) beyond which only alternatives that can still end
# within the limit are chosen; it bounds the recursive noun phrases.
DEFAULT_MAX_DEPTH = 5


def _min_heights(grammar: dict[str, tuple[tuple[str, ...], ...]]) -> dict[str, int]:
    """For each nonterminal, the least expansion depth at which it can bottom out in terminals."""
    heights: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        for symbol, alternatives in grammar.items():
            for alternative in alternatives:
                children = [heights.get(s) if s in grammar else 0 for s in alternative]
                if any(h is None for h in children):
                    continue
                height = 1 + max(children, default=0)
                if height < heights.get(symbol, height + 1):
                    heights[symbol] = height
                    changed = True
    missing = set(grammar) - set(heights)
    if missing:
        raise ValueError(f"grammar symbols that never terminate: {sorted(missing)}")
    return heights


_HEIGHTS = _min_heights(GRAMMAR)


def _expand(symbol: str, rng: random.Random, budget: int) -> list[str]:
    """Terminals of one random expansion of `symbol` using at most `budget` levels."""
    if symbol not in GRAMMAR:
        return [symbol]
    alternatives = [
        alt
        for alt in GRAMMAR[symbol]
        if 1 + max((_HEIGHTS.get(s, 0) for s in alt), default=0) <= budget
    ]
    if not alternatives:
        raise ValueError(f"max_depth too small to expand {symbol} (needs {_HEIGHTS[symbol]})")
    return [word for s in rng.choice(alternatives) for word in _expand(s, rng, budget - 1)]


_NO_SPACE_BEFORE = {".", ",", "?", "!"}


def _render(words: list[str]) -> str:
    text = ""
    for word in words:
        text += word if (not text or word in _NO_SPACE_BEFORE) else " " + word
    # "a" before a vowel sound; the vocabulary avoids words where spelling misleads ("hour", "user").
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
    return text[:1].upper() + text[1:]


def generate_sentence(category: str, rng: random.Random, max_depth: int = DEFAULT_MAX_DEPTH) -> str:
    """One random sentence of `category` (one of SYNTAX_CATEGORIES), capitalised and punctuated."""
    if category not in SYNTAX_CATEGORIES:
        raise ValueError(f"unknown syntax category {category!r}; valid: {', '.join(SYNTAX_CATEGORIES)}")
    return _render(_expand(f"<{category}>", rng, max_depth))


def syntax_sentences(
    per_category: int = 12, seed: int = 0, max_depth: int = DEFAULT_MAX_DEPTH
) -> list[SyntaxSentence]:
    """`per_category` distinct sentences for each of SYNTAX_CATEGORIES, grouped by category in
    that order. The same seed gives the same list. Raises ValueError if the grammar cannot produce
    that many distinct sentences of a category within a generous number of tries."""
    if per_category < 0:
        raise ValueError(f"per_category must be >= 0, got {per_category}")
    rng = random.Random(seed)
    sentences: list[SyntaxSentence] = []
    for category in SYNTAX_CATEGORIES:
        seen: set[str] = set()
        tries = 0
        while len(seen) < per_category:
            tries += 1
            if tries > 100 * per_category + 100:
                raise ValueError(
                    f"found only {len(seen)} distinct {category!r} sentences; ask for fewer per category"
                )
            text = generate_sentence(category, rng, max_depth)
            if text not in seen:
                seen.add(text)
                sentences.append(SyntaxSentence(text=text, category=category))
    return sentences
