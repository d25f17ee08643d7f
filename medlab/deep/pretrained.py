"""Small models shipped inside the package (no download): trained on phantoms by
:mod:`medlab.deep.train_models`, each with a model card (``<name>.json``) beside its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ParameterError, ReadError
from ..outputs import Checkpoint

WEIGHTS = Path(__file__).with_name("weights")


def pretrained_models() -> dict[str, dict[str, Any]]:
    """The shipped models and their cards: task, channels, classes, seed, validation and test Dice.

    Examples
    --------
    >>> sorted(pretrained_models())                  # doctest: +SKIP
    ['brain_tumour', 'lung_nodules']
    """
    out = {}
    for card in sorted(WEIGHTS.glob("*.json")):
        if card.with_suffix(".pt").is_file():
            try:
                out[card.stem] = json.loads(card.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise ReadError(f"the card of the shipped model {card.stem!r} ({card}) is damaged "
                                f"({type(exc).__name__}: {exc}); reinstall medlab") from None
            if not isinstance(out[card.stem], dict):
                raise ReadError(f"the card of the shipped model {card.stem!r} ({card}) is not a JSON object; "
                                "reinstall medlab")
    return out


def pretrained(name: str) -> Checkpoint:
    """Load a shipped model by name, offline (``torch.load(..., weights_only=True)``).

    Parameters
    ----------
    name : str
        ``"brain_tumour"`` (post-contrast T1 MRI: enhancing tumour, necrotic core, oedema) or
        ``"lung_nodules"`` (chest CT in HU: solid and ground-glass nodules).

    Returns
    -------
    Checkpoint
        Weights, network config, label names, preprocessing and the validation metrics
        measured when it was trained.

    Examples
    --------
    >>> model = pretrained("brain_tumour")           # doctest: +SKIP
    >>> model.labels                                 # doctest: +SKIP
    {8: 'enhancing tumour', 9: 'necrotic core', 7: 'oedema'}
    """
    path = WEIGHTS / f"{name}.pt" if isinstance(name, str) and name.isidentifier() else None
    if path is None or not path.is_file():
        known = sorted(pretrained_models())
        raise ParameterError(f"no shipped model named {name!r}; shipped models: {known}")
    try:
        return Checkpoint.load(path)
    except ReadError as exc:
        raise ReadError(f"the shipped model {name!r} is damaged ({exc}); reinstall medlab") from None
