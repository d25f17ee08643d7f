"""What the study, the store and the statistics share: the verdict categories, errors, checks."""

from __future__ import annotations

from ..errors import MedlabError, ParameterError

VERDICTS = ("relevant", "partly", "irrelevant", "artefact")
"""The structured verdict on one map, in the order the form shows them."""

VERDICT_LABELS = {
    "relevant": "Highlights the relevant finding",
    "partly": "Partly highlights the finding",
    "irrelevant": "Highlights an irrelevant region",
    "artefact": "Driven by an artefact",
}
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
"""Confidence of a verdict: 1 = a guess, 5 = certain."""


class ReviewStoreError(MedlabError, OSError):
    """The verdict database cannot be opened or written (corrupt, foreign, locked too long)."""


class VerdictConflict(MedlabError):
    """A verdict would replace another one that the caller has not seen (never done silently)."""


def _text(value, what: str, *, optional: bool = False, limit: int = 200) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{what} must be a non-empty text; got {value!r}")
    value = value.strip()
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise ParameterError(f"{what} must be one line of at most {limit} characters; got {value[:60]!r}...")
    check_encodable(value, what)
    return value


def check_encodable(text: str, what: str) -> None:
    """Refuse text that cannot be stored as UTF-8 (a lone surrogate, e.g. half of an emoji
    cut by a program that counted UTF-16 units)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParameterError(f"{what} holds a character that is not valid Unicode text (position {exc.start}); "
                             "retype it") from None
