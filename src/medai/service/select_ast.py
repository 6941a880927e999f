"""The syntax tree of a selection (:mod:`medai.service.select_parse` builds it).

Every node is a frozen value whose ``str()`` is its normalised text: one line, lower-case
words, minimal parentheses (``and`` binds tighter than ``or``, ``not`` tighter than both),
strings double-quoted. Parsing that text gives back an equal node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medai.service.tree import Level

__all__ = [
    "And",
    "Attribute",
    "Compare",
    "Condition",
    "CountSeries",
    "Exists",
    "HasSeries",
    "InList",
    "Literal",
    "Not",
    "Or",
    "Selection",
]

Literal = str | int | float


@dataclass(frozen=True)
class Attribute:
    """A DICOM keyword, optionally scoped: ``study.StudyDescription``, ``flair.SeriesNumber``."""

    keyword: str
    scope: str | None = None

    def __str__(self) -> str:
        return f"{self.scope}.{self.keyword}" if self.scope else self.keyword


@dataclass(frozen=True)
class Compare:
    """``attribute op value``: op one of :data:`COMPARISONS` or ``~`` / ``like``."""

    attribute: Attribute
    op: str
    value: Literal | Attribute

    def __str__(self) -> str:
        return f"{self.attribute} {self.op} {_format_value(self.value)}"


@dataclass(frozen=True)
class InList:
    """``attribute in (v1, v2, …)``: equal (as ``=``) to one of the values."""

    attribute: Attribute
    values: tuple[Literal, ...]

    def __str__(self) -> str:
        return f"{self.attribute} in ({', '.join(_format_value(v) for v in self.values)})"


@dataclass(frozen=True)
class Exists:
    """``exists(attribute)``: present and not empty."""

    attribute: Attribute

    def __str__(self) -> str:
        return f"exists({self.attribute})"


@dataclass(frozen=True)
class HasSeries:
    """``has series alias (condition)``: some series satisfies it; ``alias`` binds that series."""

    alias: str
    condition: Condition

    def __str__(self) -> str:
        return f"has series {self.alias} ({self.condition})"


@dataclass(frozen=True)
class CountSeries:
    """``count(series [where condition]) op number``."""

    condition: Condition | None
    op: str
    number: int | float

    def __str__(self) -> str:
        inner = f"series where {self.condition}" if self.condition is not None else "series"
        return f"count({inner}) {self.op} {self.number!r}"


@dataclass(frozen=True)
class Not:
    """``not condition``."""

    condition: Condition

    def __str__(self) -> str:
        inner = str(self.condition)
        return f"not ({inner})" if isinstance(self.condition, And | Or) else f"not {inner}"


@dataclass(frozen=True)
class And:
    """``a and b and …``: all hold (under one binding of the aliases)."""

    parts: tuple[Condition, ...]

    def __str__(self) -> str:
        return " and ".join(f"({p})" if isinstance(p, Or) else str(p) for p in self.parts)


@dataclass(frozen=True)
class Or:
    """``a or b or …``: one holds."""

    parts: tuple[Condition, ...]

    def __str__(self) -> str:
        return " or ".join(str(p) for p in self.parts)


Condition = Compare | InList | Exists | HasSeries | CountSeries | Not | And | Or


@dataclass(frozen=True)
class Selection:
    """A parsed selection: the level, the condition (``None``: everything) and the source.

    ``str(selection)`` is the normalised text (one line, minimal parentheses), which parses
    back to an equal selection; ``source`` is the text as given.
    """

    level: Level
    condition: Condition | None = None
    source: str = field(default="", compare=False)

    def __str__(self) -> str:
        head = f"select {self.level.value}"
        return head if self.condition is None else f"{head} where {self.condition}"


def _format_value(value: Literal | Attribute) -> str:
    if isinstance(value, Attribute):
        return str(value)
    if isinstance(value, str):
        return '"' + _escape(value) + '"'
    return repr(value)


def _escape(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        nxt = value[i + 1] if i + 1 < len(value) else ""
        if char == '"':
            out.append('\\"')
        elif char == "\\" and nxt in ('"', "\\", ""):
            out.append("\\\\")
        else:
            out.append(char)
    return "".join(out)
