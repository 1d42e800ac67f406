"""Labels from file names, as the seed's ``directory_clf`` did, by a token rule.

The rule: take the last path segment of the object key, drop its extension, lower-case
it and split it into tokens at every character that is not a letter or digit and at
every letter/digit boundary (``Rain-7.JPG`` -> ``rain, 7``; ``sunrise_003`` ->
``sunrise, 003``; ``cloudy12`` -> ``cloudy, 12``). The label is the one class name that
appears as a whole token. No class token -> ``no_class``; two different class tokens ->
``ambiguous_class``. Unlike the seed's substring test (``if i in x``), ``rainbow_shine.jpg``
is ``shine`` (``rainbow`` is not the token ``rain``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_TOKEN = re.compile(r"[^\W\d_]+|\d+")


@dataclass(frozen=True)
class Labelled:
    """Exactly one class name is a token of the file name."""

    label: str
    reason: None = None
    detail: str = ""


@dataclass(frozen=True)
class Unlabelled:
    """No class name, or more than one, is a token of the file name."""

    reason: str  # no_class | ambiguous_class
    detail: str
    label: None = None


# Both carry label, reason and detail; checking ``label is None`` tells them apart.
LabelResult = Labelled | Unlabelled


def tokens(key: str) -> list[str]:
    """Tokens of the file-name part of an object key (see the module docstring)."""
    name = key.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return _TOKEN.findall(stem.lower())


def label_for_key(key: str, classes: Sequence[str]) -> LabelResult:
    found = sorted({t for t in tokens(key) if t in classes}, key=list(classes).index)
    if len(found) == 1:
        return Labelled(found[0])
    if not found:
        return Unlabelled("no_class", f"no class name ({', '.join(classes)}) is a token")
    return Unlabelled("ambiguous_class", f"name matches {', '.join(found)}")
