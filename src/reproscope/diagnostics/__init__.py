"""Tools that run models to explain them: ``diagnose`` (the checks on a recipe or your model),
``align`` (your model against a reference, tensor by tensor), ``evaluate`` (``diagnose eval``),
``replay`` (a recorded non-finite step), ``profile``, ``plan`` and ``budget`` (what a run will cost),
``audit`` (a loop's recipe against the paper's), the bug ``zoo`` and ``models_table``.
"""
