"""Checks that catch the bugs that wreck reproductions, before the GPU-day is spent.

Each check works on any ``nn.Module`` plus data and returns a :class:`CheckResult`: pass / warn /
fail, what was measured against what was expected, a plain-words explanation and the most likely
causes. They are plain functions, usable from pytest::

    from reproscope.checks import CheckData, run_checks
    results = run_checks(lambda: MyNet(num_classes=10), CheckData(x, y, num_classes=10))
    assert all(r.status != "fail" for r in results), [r.summary() for r in results]

With only (x, y), training checks use a textbook AdamW step and split the batch into train and
held-out halves; ``recipe_subject(recipe)`` gives them the recipe's own data pipeline and Trainer.

Checks (in run order): loss-at-init, init-scale, grad-flow, batch-independence (``model.py``);
data (``data.py``); overfit-batch, input-independent, determinism, lr-range (``training.py``);
tensor-attributes, rational-denominator, paper-init (``layers.py``: the papers' layers, one forward pass each);
recipe-audit (``audit.py``, needs a recipe). The bug zoo that proves they work: ``zoo.py``.
"""

# the imports register the checks: their order is `diagnose all`'s run order (kept out of import sorting)
# isort: off
from . import model as _model  # noqa: F401  (registers the checks, in this order)
from . import data as _data  # noqa: F401
from . import training as _training  # noqa: F401
from . import layers as _layers  # noqa: F401
# isort: on
from .audit import recipe_audit
from .core import CHECKS, CheckData, CheckResult, DataSource, ReferenceRun, StepOut, run_checks
from .subject import Mutation, recipe_subject

__all__ = ["CHECKS", "CheckData", "CheckResult", "DataSource", "Mutation", "ReferenceRun", "StepOut",
           "recipe_audit", "recipe_subject", "run_checks"]
