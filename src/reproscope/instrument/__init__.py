"""Instrumentation: hooks that *collect* per-layer statistics (attached through trainer events).

Only collection lives here; reading and reporting is ``reproscope.diagnostics``.
"""
