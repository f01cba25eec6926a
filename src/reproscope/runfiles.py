"""A run directory's files, each spelled once, and the value a run did not show: ``NOT_OBSERVED``.

Both ways of training write the same run record: ``reproscope train`` (the Trainer, through
``train.rundir``) and your own loop under ``reproscope.watch`` (through the same writer). Every reader
(``report``, ``compare``, ``note``, ``audit``, ``runs``, ``diagnose replay``) opens the files by these
names.

=====================  ===============================================================================
file                   what it holds
=====================  ===============================================================================
``config.json``        the run's settings in the recipe's shape; a watched loop's holds the keys its loop
                       showed and lists the others under ``not_observed``
``environment.json``   python / torch / device / git commit / argv / world size
``deviations.json``    every setting that departs from the parent recipe, with its reason (and, for a
                       watched loop, the loop audit's code, consequence and declared reasons)
``metrics.jsonl``      one JSON row per logged step (train, val, event)
``stats.jsonl``        the probes' per-module statistics
``model_source.json``  the user's model: spec, file hash
``loop.json``          a watched loop's evidence: facts, details, how the loop ended
``user_config.json``   a watched loop's own hyperparameters, kept whole
``summary.json``       the closing summary of a ``train`` run
``data.json``          per split: images, classes, unreadable files skipped
``resume_changes.json`` keys changed on resume, with the step they apply from
``audit.json``         ``reproscope audit`` of a recipe run (its ``deviations.json`` is the recipe's log)
``paper_probes.jsonl`` the paper-figure probes over training
``ablation/``          ``reproscope ablate``'s runs (one run directory per arm and seed) and ``ablation.json``
=====================  ===============================================================================

``NOT_OBSERVED`` is a value, not a string: it prints as "not observed" (in any format, ``f"{v:.2f}"``
included) and refuses arithmetic, comparison and truth testing (``TypeError`` naming what to do), so a
reader that forgot to check for it fails in tests instead of computing with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import ConfigError

CONFIG = "config.json"
ENVIRONMENT = "environment.json"
DEVIATIONS = "deviations.json"
METRICS = "metrics.jsonl"
STATS = "stats.jsonl"
MODEL_SOURCE = "model_source.json"
LOOP = "loop.json"
USER_CONFIG = "user_config.json"
SUMMARY = "summary.json"
DATA = "data.json"
RESUME_CHANGES = "resume_changes.json"
AUDIT = "audit.json"
PAPER_PROBES = "paper_probes.jsonl"
ABLATION = "ablation.json"
ABLATION_DIR = "ablation"

# the run record: what ``train.rundir.write_record`` writes, by the keyword it takes
RECORD = {"config": CONFIG, "environment": ENVIRONMENT, "deviations": DEVIATIONS, "model_source": MODEL_SOURCE,
          "loop": LOOP, "user_config": USER_CONFIG, "data": DATA, "summary": SUMMARY}

NOT_OBSERVED_TEXT = "not observed"


class NotObserved:
    """The one value of a setting the run did not show (see the module docstring). ``NOT_OBSERVED`` is
    its only instance; test with ``v is NOT_OBSERVED`` or :func:`observed`.

    Raises:
        TypeError: on arithmetic, ordering, ``bool()``, ``float()``/``int()``.
    """

    _instance: "NotObserved | None" = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return NOT_OBSERVED_TEXT

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return NOT_OBSERVED_TEXT

    def __reduce__(self):
        return (NotObserved, ())

    def _refuse(self, *_args, **_kw):
        raise TypeError("a value the run did not show (not observed) cannot be computed with; check "
                        "`value is NOT_OBSERVED` first (reproscope.runfiles)")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __pow__ = __neg__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __float__ = __int__ = __round__ = _refuse

    def __eq__(self, other) -> bool:
        return other is self

    def __hash__(self) -> int:
        return hash(NOT_OBSERVED_TEXT)


NOT_OBSERVED = NotObserved()


def observed(value: Any) -> bool:
    """False for ``NOT_OBSERVED`` and for the string "not observed" older run files hold; else True."""
    return value is not NOT_OBSERVED and not (isinstance(value, str) and value == NOT_OBSERVED_TEXT)


def read_value(value: Any) -> Any:
    """A value as read from a run file: the legacy string "not observed" becomes ``NOT_OBSERVED``."""
    return value if observed(value) else NOT_OBSERVED


def _default(obj: Any) -> Any:
    return NOT_OBSERVED_TEXT if obj is NOT_OBSERVED else str(obj)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, written to a temporary name first (never half a file);
    ``NOT_OBSERVED`` is written as "not observed", anything else not JSON-able as its ``str``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON at ``path``, or ``default`` when there is no such file.

    Raises:
        ConfigError: the file is not valid JSON (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
