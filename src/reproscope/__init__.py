"""reproscope: a debugging-focused, instrumented PyTorch trainer for reproducing vision papers.

Subpackages: ``model`` (paper models, counting), ``runtime`` (device, autocast, seeding, RNG,
distributed), ``data`` (image folders, datasets, loaders, augmentation), ``train`` (the trainer),
``instrument`` (hooks that collect), ``checks`` (sanity checks), ``report`` (readers of finished runs:
run records, the note, its figures, comparison) and ``diagnostics`` (tools that run models to explain
them: diagnose, align, eval, replay, profile, plan); ``launch`` and ``cli`` put them together, and
``ablate`` trains a run's deviations back one at a time.

Each layer imports only from its own layer and the layers below it, function-local imports included
(``tests/test_layers.py`` enforces it, and that the order below is the test's):

Layers: config, console, papers, recipes, hardware, plotting, runfiles -> model -> runtime -> data -> train -> instrument -> checks -> report -> diagnostics -> launch, ablate, cli, __main__, __init__

The public API for your own loop: :func:`watch` (and the :class:`Watch` it returns).
"""

__version__ = "0.1.0"

from .instrument.watch import Watch, watch  # noqa: E402  (the public API: help(reproscope.watch))

__all__ = ["Watch", "watch", "__version__"]
