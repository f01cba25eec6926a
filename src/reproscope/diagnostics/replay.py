"""`reproscope diagnose replay PATH`: rerun a NaN reproducer and print the same report.

A reproducer (``nonfinite-stepN.pt`` in the run directory) holds the recipe, the model and
optimizer state from before the failing step, the batch and the RNG state. Faults injected by
hooks are not saved with it; faults in weights, data or arithmetic reproduce.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch

from ..config import recipe_from_dict
from ..data.augment import soft_cross_entropy
from ..instrument.tripwire import format_report, locate_nonfinite
from ..model.build import build_model
from ..model.spec import spec_file, spec_in_run, user_model
from ..train.checkpoint import CheckpointError, load_file, saved_recipe


def replay(path: str | Path, device: str = "cpu", *, trust_pickle: bool = False) -> int:
    """Rerun the reproducer at ``path`` (read weights-only unless ``trust_pickle``); 1 if it still
    produces a non-finite value, else 0.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, or not a reproducer.
    """
    path = Path(path)
    rep = load_file(path, map_location=device, trust_pickle=trust_pickle, what="reproducer")
    try:
        recipe = recipe_from_dict(saved_recipe(rep))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable reproscope reproducer ({type(e).__name__}: {e})") from e
    model = _rebuild_model(path, rep, recipe).to(device)
    try:
        model.load_state_dict(rep["model"])
    except RuntimeError as e:  # the spec's defaults build another model than the run trained
        source = json.loads(rep.get("model_source_json") or "null") or {}
        first = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(
            f"{path}: the model rebuilt from {source.get('spec', 'the recipe')!r} does not take the saved weights "
            f"({first}): the spec builds it with its default arguments, not the ones your loop used; pass "
            f"model_spec='file.py:factory:arg=value,...' (or a factory that builds it as your loop does) to "
            f"reproscope.watch, then rerun the loop to write a new reproducer") from None
    criterion = functools.partial(soft_cross_entropy, label_smoothing=recipe.reg.label_smoothing)
    if any(y is None for _, y in rep["batches"]):  # a watched loop that gave no targets: its surrogate loss
        criterion = _surrogate
    batches = [(x.to(device), None if y is None else y.to(device)) for x, y in rep["batches"]]
    rng, unrestored = _restorable(rep.get("rng"))
    report = locate_nonfinite(model, batches, criterion, step=rep["step"], rng_state=rng)
    print(format_report(report))
    if unrestored:
        print(f"note: not restored: {unrestored}; random draws in the step (dropout, drop path) differ from the run's")
    original = rep.get("report", {})
    if original and (original.get("module"), original.get("phase")) != (report.module, report.phase):
        print(f"note: the run reported {original.get('module')!r} ({original.get('phase')}); the fault may have "
              f"come from a hook, a non-deterministic kernel, or constructor arguments the model spec does not hold "
              f"(the replay builds the model with its defaults), which the reproducer cannot carry")
    print("verdict: REPRODUCED (exit 1: the step is still non-finite)" if report.phase != "none" else
          "verdict: NOT REPRODUCED (exit 0: the replayed step is finite)")
    return 1 if report.phase != "none" else 0


def _restorable(rng: dict | None) -> tuple[dict | None, str]:
    """The RNG state the replay can restore here, and what it cannot (""): a reproducer without one, or a
    CUDA generator's state on a machine without CUDA."""
    if not rng:
        return None, "every random state (the reproducer holds none)"
    if "cuda" in rng and not torch.cuda.is_available():
        return {k: v for k, v in rng.items() if k != "cuda"}, "the CUDA generators' state (no CUDA here)"
    return rng, ""


def _surrogate(out, _y):
    return out.float().square().mean()


def _rebuild_model(path: Path, rep: dict, recipe):
    """The model the reproducer was written from: the recipe's registered model, or the user's model
    from the copy its run directory holds (``model_src/``), else from the spec as given."""
    source = json.loads(rep.get("model_source_json") or "null")
    if not source:
        return build_model(recipe.model, rep["num_classes"], recipe.data.img_size)
    spec = spec_in_run(source, path.parent)
    print(f"replay: rebuilding the user's model from {spec}")
    x = rep["batches"][0][0] if rep.get("batches") else None  # the input as it was: its size, not the recipe's
    img_size = int(x.shape[-1]) if x is not None and x.ndim == 4 else None
    file = spec_file(spec)
    folder = str(Path(file).resolve().parent) if file is not None else None
    if folder and folder not in sys.path:  # the model file imports its neighbours, as when its script ran
        sys.path.insert(0, folder)
    return user_model(spec, rep["num_classes"], img_size=img_size)()
