"""Diagnostics: read what training and instruments recorded, and report it."""
