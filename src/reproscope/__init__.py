"""reproscope: a debugging-focused, instrumented PyTorch trainer for reproducing vision papers.

Subpackages: ``model`` (paper models), ``train`` (trainer and data), ``instrument`` (hooks that
collect), ``checks`` (sanity checks) and ``diagnostics`` (CLI reports that read and explain).
"""

__version__ = "0.1.0"


def watch(*args, **kwargs):
    """Our instruments inside your own training loop: see ``reproscope.instrument.watch``."""
    from .instrument.watch import watch as _watch
    return _watch(*args, **kwargs)
