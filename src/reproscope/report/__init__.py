"""Readers of finished runs: run records, the reproduction note, its figures, and run comparison.

``runs`` loads a run folder into a ``RunRecord`` and groups seeds; ``report`` writes the note
(``report.md``/PDF) from those records; ``report_figures`` and ``figures`` draw the curves and the
checkpoint figures; ``compare`` sets two runs side by side; ``paths`` shows paths relative to the
repository or the run, never the machine's. Nothing here builds a training loop or runs a check.
"""
