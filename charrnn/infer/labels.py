"""A labelled run's label (issue #29), checked once where it enters: the Python API, the CLI, the playground.

A run trained with `--label-by` learned one row of `label.weight` per label (config.labels, in index
order); every prediction from it is made under one of them. So a label is required for such a run
and refused for any other, and an unknown name is an error that lists the names there are. Each
audience reads its own wording of the option: `label=` in Python, `--label` on the command line,
the request's `label` field on the web.
"""
from __future__ import annotations

from typing import Optional, Sequence

from charrnn.errors import UserError

NAMES = {"python": "label=", "cli": "--label", "web": "label"}  # how each audience writes the option
GIVE = {"python": "label=NAME", "cli": "--label NAME", "web": "a label"}
SHOWN = 12   # label names a message lists before it says how many more there are


def listed(labels: Sequence[str]) -> str:
    """The names, comma-separated; past SHOWN of them, the first SHOWN and how many there are."""
    if len(labels) <= SHOWN:
        return ", ".join(labels)
    return f"{', '.join(labels[:SHOWN])}, ... ({len(labels)} labels)"


def check_label(labels: Sequence[str], label, audience: str = "python") -> Optional[int]:
    """The index of `label` among a run's `labels` (config.labels), or None for an unlabelled run given none.

    UserError (one line) for a labelled run given no label, an unlabelled run given one, a name it
    does not have (the message lists those it has), or a label that is not a string."""
    name = NAMES[audience]
    if not labels:
        if label is None:
            return None
        raise UserError(f"this run was trained without labels; drop {name}")
    if label is None:
        raise UserError(f"this run was trained with labels {listed(labels)}; give {GIVE[audience]}")
    if not isinstance(label, str):
        raise UserError(f"{name} {label!r} must be a label's name (a string): one of {listed(labels)}")
    try:
        return list(labels).index(label)
    except ValueError:
        raise UserError(f"{name} {label!r} is not a label of this run; it has {listed(labels)}") from None
