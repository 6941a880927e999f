"""The selection language of ``medai serve``: tokens, syntax tree and parser.

A selection names the level a job runs on and, optionally, a condition on DICOM
attributes and on structure::

    select study
      where has series flair (Modality = "MR" and SeriesDescription in ("FLAIR", "T2-FLAIR"))
        and has series t1ce (Modality = "MR" and SeriesDescription ~ "t1.*(gd|ce|post|\\+c)"
                             and FrameOfReferenceUID = flair.FrameOfReferenceUID)

Grammar (words are case-insensitive; DICOM keywords are spelt as in the standard)::

    selection  := "select" LEVEL [ "where" condition ]
    LEVEL      := "project" | "participant" | "study" | "series"
    condition  := and_expr { "or" and_expr }
    and_expr   := not_expr { "and" not_expr }
    not_expr   := "not" not_expr | primary
    primary    := "(" condition ")"
                | "has" "series" ALIAS "(" condition ")"
                | "count" "(" "series" [ "where" condition ] ")" CMP NUMBER
                | "exists" "(" attribute ")"
                | attribute CMP value
                | attribute ( "~" | "like" ) STRING
                | attribute "in" "(" literal { "," literal } ")"
    CMP        := "=" | "!=" | "<" | "<=" | ">" | ">="
    attribute  := [ SCOPE "." ] KEYWORD
    SCOPE      := "participant" | "study" | "series" | ALIAS
    value      := literal | attribute
    literal    := STRING | NUMBER

Strings are double-quoted; ``\\"`` is a quote, ``\\\\`` a backslash, and any other
backslash stays as written (so regular expressions read naturally). ``--`` starts a
comment that runs to the end of the line.

Where attributes are reachable: a bare keyword is looked up on the current series (at
series level, or inside ``has series`` / ``count``), then on its study, then on the
participant. ``study.`` and ``participant.`` name the enclosing levels; ``ALIAS.`` names the
series an earlier ``has series ALIAS`` bound. ``has series`` and ``count`` are for the
participant, study and project levels and do not nest.

Evaluation lives in :mod:`medai.service.select`; this module only turns text into a
:class:`Selection` or raises :class:`SelectionSyntaxError` pointing at the token.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache

from pydicom.datadict import keyword_dict, tag_for_keyword

from medai.errors import ConfigError
from medai.service.select_ast import (
    And,
    Attribute,
    Compare,
    Condition,
    CountSeries,
    Exists,
    HasSeries,
    InList,
    Literal,
    Not,
    Or,
    Selection,
)
from medai.service.tree import Level

__all__ = ["COMPARISONS", "MATCHES", "SelectionSyntaxError", "parse_selection"]

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
MATCHES = ("~", "like")
_WORDS = frozenset(
    {"select", "where", "and", "or", "not", "in", "like", "has", "exists", "count"}
    | {"series", "study", "participant", "project", "all"}
)
_SCOPES = ("participant", "study", "series")
_TOKEN = re.compile(
    r"(?P<space>\s+|--[^\n]*)"
    r"|(?P<str>\")"
    r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[=!<>~]+)"
    r"|(?P<punct>[(),.])"
)


class SelectionSyntaxError(ConfigError):
    """A selection that does not parse; the message shows the line with a caret under the token.

    Attributes:
        position: Offset of the offending token in the text (0-based).
        token: The offending token as written (``""`` at the end of the text).
    """

    def __init__(self, problem: str, *, text: str, position: int, token: str) -> None:
        self.position = position
        self.token = token
        super().__init__(_point_at(problem, text, position, token))


def _point_at(problem: str, text: str, position: int, token: str) -> str:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : end if end >= 0 else len(text)]
    column = position - start
    where = _where(text, position)
    caret = " " * column + "^" * max(1, len(token))
    return f"{problem} (at {where}):\n  {line}\n  {caret}"


def _where(text: str, position: int) -> str:
    column = position - (text.rfind("\n", 0, position) + 1)
    return f"line {text.count(chr(10), 0, position) + 1}, column {column + 1}"


@dataclass(frozen=True)
class _Token:
    kind: str  # str | num | ident | op | punct | end
    text: str
    position: int
    value: Literal = ""

    def is_word(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.lower() in words

    def describe(self) -> str:
        return "the end of the selection" if self.kind == "end" else repr(self.text)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SelectionSyntaxError(
                f"unexpected character {text[pos]!r}", text=text, position=pos, token=text[pos]
            )
        kind = match.lastgroup or ""
        if kind == "str":
            token = _read_string(text, pos)
        elif kind == "num":
            number = match.group()
            parsed: Literal = float(number) if any(c in number for c in ".eE") else int(number)
            token = _Token("num", number, pos, parsed)
        elif kind != "space":
            token = _Token(kind, match.group(), pos, match.group())
        if kind != "space":
            tokens.append(token)
            pos += len(token.text)
        else:
            pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _read_string(text: str, start: int) -> _Token:
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return _Token("str", text[start : pos + 1], start, "".join(chars))
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in ('"', "\\"):
            chars.append(text[pos + 1])
            pos += 2
            continue
        chars.append(char)
        pos += 1
    raise SelectionSyntaxError(
        'unterminated string: expected a closing "', text=text, position=start, token='"'
    )


@cache
def _keywords_by_lower() -> dict[str, str]:
    return {k.lower(): k for k in keyword_dict}


def _suggest_keyword(word: str) -> str:
    exact = _keywords_by_lower().get(word.lower())
    if exact is not None:
        return f"; did you mean {exact!r}?"
    close = difflib.get_close_matches(word, list(keyword_dict), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser:
    """Recursive descent over the tokens; checks scopes, aliases and keywords as it goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.level = Level.STUDY
        self.aliases: set[str] = set()
        self.in_series = False

    @property
    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def fail(self, problem: str, token: _Token | None = None) -> SelectionSyntaxError:
        token = token or self.peek
        return SelectionSyntaxError(
            problem, text=self.text, position=token.position, token=token.text
        )

    def expect(self, text: str, after: str) -> _Token:
        token = self.peek
        if token.text.lower() != text or token.kind in ("str", "end"):
            raise self.fail(f"expected {text!r} {after}, got {token.describe()}")
        return self.next()

    def selection(self) -> Selection:
        self.expect("select", "at the start")
        token = self.next()
        if not token.is_word(*(level.value for level in Level)):
            levels = ", ".join(level.value for level in Level)
            raise self.fail(f"expected a level ({levels}) after 'select'", token)
        self.level = Level(token.text.lower())
        condition = None
        if self.peek.is_word("where"):
            self.next()
            condition = self.condition()
        if self.peek.kind != "end":
            expected = "'and', 'or' or the end" if condition else "'where' or the end"
            raise self.fail(f"expected {expected}, got {self.peek.describe()}")
        return Selection(self.level, condition, self.text)

    def condition(self) -> Condition:
        parts = [self.and_expr()]
        while self.peek.is_word("or"):
            self.next()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(_flatten(parts, Or))

    def and_expr(self) -> Condition:
        parts = [self.not_expr()]
        while self.peek.is_word("and"):
            self.next()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(_flatten(parts, And))

    def not_expr(self) -> Condition:
        if self.peek.is_word("not"):
            self.next()
            return Not(self.not_expr())
        return self.primary()

    def primary(self) -> Condition:
        token = self.peek
        if token.kind == "punct" and token.text == "(":
            self.next()
            inner = self.condition()
            self.expect(")", f"to close the '(' at {_where(self.text, token.position)}")
            return inner
        if token.is_word("has"):
            return self.has_series()
        if token.is_word("count"):
            return self.count_series()
        if token.is_word("exists"):
            self.next()
            self.expect("(", "after 'exists'")
            attribute = self.attribute()
            self.expect(")", "after the keyword in exists(...)")
            return Exists(attribute)
        return self.comparison()

    def open_series_block(self, word: str) -> None:
        if self.level is Level.SERIES:
            raise self.fail(f"'{word}' is not available at series level (use study level)")
        if self.in_series:
            raise self.fail(f"'{word}' cannot be used inside a series condition")

    def has_series(self) -> HasSeries:
        self.open_series_block("has series")
        self.next()
        self.expect("series", "after 'has'")
        token = self.next()
        if token.kind != "ident" or token.text.lower() in _WORDS:
            raise self.fail(f"expected an alias name after 'has series', got {token.describe()}")
        if token.text in self.aliases:
            raise self.fail(f"alias {token.text!r} is already bound; choose another", token)
        self.aliases.add(token.text)
        self.expect("(", f"after 'has series {token.text}'")
        self.in_series = True
        inner = self.condition()
        self.in_series = False
        self.expect(")", f"to close 'has series {token.text} ('")
        return HasSeries(token.text, inner)

    def count_series(self) -> CountSeries:
        self.open_series_block("count")
        self.next()
        self.expect("(", "after 'count'")
        self.expect("series", "in count(...)")
        inner = None
        if self.peek.is_word("where"):
            self.next()
            self.in_series = True
            inner = self.condition()
            self.in_series = False
        self.expect(")", "to close 'count('")
        op = self.next()
        if op.kind != "op" or op.text not in COMPARISONS:
            raise self.fail(f"expected a comparison ({', '.join(COMPARISONS)}) after count", op)
        number = self.next()
        if number.kind != "num" or isinstance(number.value, str):
            raise self.fail(f"expected a number after 'count(...) {op.text}'", number)
        return CountSeries(inner, op.text, number.value)

    def comparison(self) -> Condition:
        attribute = self.attribute()
        token = self.next()
        if token.is_word("in"):
            self.expect("(", "after 'in'")
            values = [self.literal()]
            while self.peek.text == "," and self.peek.kind == "punct":
                self.next()
                values.append(self.literal())
            self.expect(")", "to close the list after 'in' (values are separated by ',')")
            return InList(attribute, tuple(values))
        if token.kind == "op" and token.text in COMPARISONS:
            return Compare(attribute, token.text, self.value())
        if token.is_word("like") or (token.kind == "op" and token.text == "~"):
            return Compare(attribute, token.text.lower(), self.pattern(token.text == "~"))
        known = ", ".join((*COMPARISONS, *MATCHES, "in"))
        if token.kind == "op":
            raise self.fail(f"unknown operator {token.text!r}; expected one of {known}", token)
        raise self.fail(
            f"expected an operator ({known}) after {attribute}, got {token.describe()}", token
        )

    def pattern(self, regex: bool) -> str:
        token = self.next()
        if token.kind != "str" or not isinstance(token.value, str):
            raise self.fail(f"expected a quoted pattern, got {token.describe()}", token)
        if regex:
            try:
                re.compile(token.value)
            except re.error as err:
                raise self.fail(f"not a valid regular expression: {err}", token) from err
        return token.value

    def literal(self) -> Literal:
        token = self.next()
        if token.kind not in ("str", "num"):
            raise self.fail(f"expected a quoted string or a number, got {token.describe()}", token)
        return token.value

    def value(self) -> Literal | Attribute:
        if self.peek.kind in ("str", "num"):
            return self.literal()
        if self.peek.kind == "ident":
            return self.attribute()
        raise self.fail(f"expected a value (string, number or keyword), got {self.peek.describe()}")

    def attribute(self) -> Attribute:
        token = self.next()
        if token.kind != "ident" or token.text.lower() in _WORDS - set(_SCOPES):
            raise self.fail(f"expected a DICOM keyword, got {token.describe()}", token)
        scope = None
        if self.peek.kind == "punct" and self.peek.text == ".":
            scope = self.check_scope(token)
            self.next()
            token = self.next()
        if token.kind != "ident" or tag_for_keyword(token.text) is None:
            problem = f"{token.describe()} is not a DICOM keyword"
            raise self.fail(problem + _suggest_keyword(token.text), token)
        return Attribute(token.text, scope)

    def check_scope(self, token: _Token) -> str:
        name = token.text.lower() if token.text.lower() in _WORDS else token.text
        if name == "series" and not (self.level is Level.SERIES or self.in_series):
            raise self.fail(
                "'series.' is reachable only at series level or in a series "
                "condition; bind a series with 'has series ALIAS (...)'",
                token,
            )
        if name == "study" and self.level is Level.PARTICIPANT and not self.in_series:
            raise self.fail(
                "'study.' is not reachable at participant level outside a series condition", token
            )
        if name in _SCOPES or name in self.aliases:
            return name
        known = ", ".join(sorted(self.aliases)) or "none bound yet"
        raise self.fail(
            f"unknown scope {token.text!r}: expected participant, study, series "
            f"or an alias bound earlier by 'has series' ({known})",
            token,
        )


def _flatten(parts: list[Condition], kind: type[And] | type[Or]) -> tuple[Condition, ...]:
    flat: list[Condition] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, kind) else (part,))
    return tuple(flat)


def parse_selection(text: str) -> Selection:
    """Parse a selection (grammar in this module's docstring).

    Args:
        text: The selection, e.g. ``select series where Modality = "MR"``.

    Returns:
        The :class:`Selection`; ``str()`` of it is the normalised text.

    Raises:
        SelectionSyntaxError: The text does not parse; the message shows the line with a
            caret under the offending token and says what was expected there.
    """
    if not isinstance(text, str):
        raise TypeError(f"selection must be a str, got {type(text).__name__}")
    return _Parser(text).selection()
