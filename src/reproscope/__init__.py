"""reproscope: a debugging-focused, instrumented PyTorch trainer for reproducing vision papers.

Subpackages: ``model`` (paper models), ``runtime`` (device, autocast, seeding, RNG, distributed),
``train`` (trainer and data), ``instrument`` (hooks that collect), ``checks`` (sanity checks) and
``diagnostics`` (CLI reports that read and explain); ``launch`` and ``cli`` put them together.

Each layer imports only from its own layer and the layers below it, function-local imports included
(``tests/test_layers.py`` enforces it, and that the order below is the test's):

Layers: config, recipes, hardware, plotting -> model -> runtime -> train -> instrument -> checks -> diagnostics -> launch, cli, __main__, __init__

The public API for your own loop: :func:`watch` (and the :class:`Watch` it returns).
"""

__version__ = "0.1.0"

from .instrument.watch import Watch, watch  # noqa: E402  (the public API: help(reproscope.watch))

__all__ = ["Watch", "watch", "__version__"]
