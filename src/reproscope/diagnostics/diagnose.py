"""`reproscope diagnose <check>|all`: run the checks on a recipe's model, data and Trainer (or a user's model)."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

from ..checks import CHECKS, CheckData, CheckResult, recipe_audit, recipe_subject, run_checks
from ..checks.core import NONFINITE_ELSEWHERE, in_quick_tier, tally, verdict_line
from ..checks.subject import Mutation
from ..checks.zoo import get_bug
from ..config import ConfigError, Recipe, apply_overrides, nearest
from ..model.build import build_model
from ..model.dtypes import MIXED_DTYPE, dominant_dtype, dtype_message, dtype_outliers, is_dtype_error
from ..model.spec import user_model

CHECK_NAMES = list(CHECKS) + ["recipe-audit"]


def checks_help() -> str:
    """The checks that exist, in run order, with the first line of each docstring; ``*`` marks the quick tier."""
    rows = [(n, fn.__doc__ or sys.modules[fn.__module__].__doc__) for n, fn in CHECKS.items()]
    rows.append(("recipe-audit", recipe_audit.__doc__))
    width = max(len(n) for n, _ in rows) + 2
    lines = ["checks (run in this order by `diagnose all`; * = also in the --quick tier, which runs them with "
             "short budgets):"]
    for n, doc in rows:
        first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
        lines.append(f"  {n + ('*' if in_quick_tier(n) else ''):<{width}} {first}")
    lines.append("A check that cannot measure on this model, size or budget says 'not measured' (status SKIP): "
                 "neither a pass nor a fail; the exit code is 1 only when a check fails.")
    return "\n".join(lines)


def preflight(make_model, data: CheckData, spec: str) -> CheckResult | None:
    """Build the model once and run two training images through it, before any check runs.

    Returns None for a model that runs and uses one floating dtype; else a ``model-dtypes`` result
    with code ``mixed-dtype`` naming each parameter or buffer whose floating dtype differs from the
    parameters' (``model.dtypes``): FAIL when the forward raises for it (no check can run), WARN
    when it runs anyway.

    Raises:
        ConfigError: once, naming what the model expects, when it rejects the input or returns
            something other than ``[N, num_classes]`` logits.
    """
    import torch
    model = make_model()
    outliers = dtype_outliers(model)
    x = data.x[:2]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if outliers and is_dtype_error(e):
            return _dtype_result(model, outliers, f"{type(e).__name__}: {first}")
        raise ConfigError(f"model {spec}: it rejects the data's input {list(x.shape)} ({type(e).__name__}: {first}); "
                          f"give the data the size it expects (--set data.img_size=N) or build the model for "
                          f"{x.shape[-1]} px (img_size/patch_size arguments of its factory)") from e
    if not isinstance(out, torch.Tensor) or out.shape != (2, data.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {spec}: it returns {got} for a batch of 2, expected logits [2, {data.num_classes}] "
                          f"(num_classes={data.num_classes}; its factory must take num_classes, or return that many "
                          f"outputs)")
    return _dtype_result(model, outliers, None) if outliers else None


def _dtype_result(model, outliers: list, error: str | None) -> CheckResult:
    """The ``model-dtypes`` result: FAIL when the forward raised ``error``, else WARN."""
    main = str(dominant_dtype(model)).replace("torch.", "")
    return CheckResult(
        "model-dtypes", "fail" if error else "warn",
        f"{len(outliers)} parameter/buffer tensor(s) not {main}" + (f"; the forward raises ({error})" if error else ""),
        f"one floating dtype ({main})",
        "A model's parameters and buffers share one floating dtype; a float64 tensor (numpy's default, kept by "
        "torch.from_numpy) met by float32 activations makes the next op raise or turn the activations float64.",
        [dtype_message(model, outliers)],
        {"dominant": main, "outliers": [{"name": n, "kind": k, "dtype": str(d).replace("torch.", "")}
                                        for n, k, d in outliers], "forward_error": error},
        [MIXED_DTYPE])


def tensor_subject(recipe: Recipe, path: str, out_dir: Path | None):
    """--data FILE.pt: {"x": [N, C, H, W] model inputs, "y": [N] labels} (optionally "val_x", "val_y",
    "num_classes"), or a tuple (x, y). Training checks then use the textbook AdamW step."""
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ConfigError(f"--data {path}: cannot load it ({e})") from e
    if isinstance(obj, (tuple, list)):
        obj = {"x": obj[0], "y": obj[1]}
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), torch.Tensor) for k in ("x", "y")):
        raise ConfigError(f"--data {path}: expected a dict with 'x' and 'y' tensors, or a tuple (x, y)")
    k = int(obj.get("num_classes", int(obj["y"].max()) + 1))
    data = CheckData(obj["x"].float(), obj["y"].long(), k, recipe.reg.label_smoothing, lr=recipe.optim.lr,
                     val_x=obj.get("val_x"), val_y=obj.get("val_y"), out_dir=out_dir)
    return (lambda: build_model(recipe.model, k, recipe.data.img_size)), data, recipe


def run_diagnosis(recipe: Recipe, which: str = "all", *, model_spec: str | None = None,
                  mutation: Mutation | None = None, out_dir: Path | None = None,
                  progress: bool = False, data_path: str | None = None, quick: bool = False) -> list[CheckResult]:
    """The checks named by ``which`` (a check or 'all') on ``recipe`` (with ``mutation`` planted).
    ``quick``: the quick tier (for 'all', every check but ``SLOW_CHECKS``; each with its short budget)."""
    if which != "all" and which not in CHECK_NAMES:
        raise ConfigError(f"unknown check {which!r}{nearest(which, CHECK_NAMES)}; available: "
                          f"{', '.join(CHECK_NAMES)}, all")
    if data_path and not data_path.endswith(".pt"):  # an image folder (train/ and val/ class folders)
        recipe = apply_overrides(recipe, {"data.dataset": "imagefolder", "data.root": data_path})
    if data_path and data_path.endswith(".pt"):
        make_model, data, as_given = tensor_subject(recipe, data_path, out_dir)
    else:
        make_model, data, as_given = recipe_subject(recipe, mutation=mutation, out_dir=out_dir, progress=progress)
    if model_spec:
        k, chans = data.num_classes, int(data.x.shape[1])
        user = user_model(model_spec, k, img_size=int(data.x.shape[-1]), in_chans=chans)
        make_model = (lambda: mutation.model(user())) if mutation is not None and mutation.model else user
        # grad-flow may rebuild the model for a larger input (a stage reduced to 1x1 at this size)
        make_model.at_size = lambda px: user_model(model_spec, k, img_size=px, in_chans=chans)
    dtypes = preflight(make_model, data, model_spec or recipe.model.name)
    if dtypes is not None and dtypes.status == "fail":  # the model cannot run: no check can measure
        return [dtypes]
    data.quick = quick
    names = [n for n in CHECKS if which == n or (which == "all" and (not quick or in_quick_tier(n)))]
    audit = which in ("all", "recipe-audit")
    results = ([dtypes] if dtypes is not None else []) + run_checks(make_model, data, names, progress=progress,
                                                                     total=len(names) + audit)
    if audit:
        results.append(recipe_audit(as_given, make_model(), len(data.source.train_images) if data.source else None))
        if progress:
            print(verdict_line(len(results), len(results), results[-1], 0.0), flush=True)
    return results


def format_results(results: list[CheckResult], width: int | None = None) -> str:
    """One verdict per check, then each non-passing check's explanation and causes, wrapped at word
    boundaries to ``width`` columns (default: the terminal's, 100 when it has none), continuation lines
    indented under the text they continue. A check not measured because an earlier one reported the
    model non-finite (code ``nonfinite-see-first``) has its verdict line only: the cause is said once."""
    width = max(60, width or shutil.get_terminal_size((100, 24)).columns)

    def wrap(text: str, indent: int) -> list[str]:
        return textwrap.wrap(text, width, subsequent_indent=" " * indent, break_long_words=False,
                             break_on_hyphens=False) or [""]

    lines = [ln for r in results for ln in wrap(r.summary(), 26)]
    for r in results:
        if r.status != "pass" and r.codes != [NONFINITE_ELSEWHERE]:
            lines += [""] + wrap(f"{r.name}: {r.explanation}", 2)
            lines += [ln for code, c in zip(r.codes, r.causes) for ln in wrap(f"  - [{code}] {c}", 6)]
    return "\n".join(lines)


def diagnose(recipe: Recipe, which: str, model_spec: str | None = None, as_json: bool = False,
             out_dir: str | None = None, bug: str | None = None, data_path: str | None = None,
             quick: bool = False) -> int:
    """Run and print the checks; exit code 1 when a check fails, else 0 (a check that could not measure,
    status skip, is neither a pass nor a fail)."""
    out = Path(out_dir) if out_dir else Path(recipe.run.out_dir) / f"diagnose-{recipe.name}{f'-{bug}' if bug else ''}"
    mutation = None
    if bug:
        mutation = get_bug(bug).mutation
        print(f"planted bug {bug!r}: {get_bug(bug).what}")
    t0 = time.perf_counter()
    if not as_json:
        tier = f"the quick tier (every check but {', '.join(n for n in CHECKS if not in_quick_tier(n))}; short budgets)" if quick else "every check"
        print(f"diagnose {which} on {model_spec or recipe.model.name}: " +
              (tier if which == "all" else f"{which}{' (short budget)' if quick else ''}"), flush=True)
    results = run_diagnosis(recipe, which, model_spec=model_spec, mutation=mutation, out_dir=out,
                            progress=not as_json, data_path=data_path, quick=quick)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    else:
        print("\n" + format_results(results))
        wrote = out.is_dir() and any(out.iterdir())
        n = len(results)
        print(f"\n{tally(results)} ({n} check{'s' * (n != 1)} in {time.perf_counter() - t0:.0f} s)"
              + (f"; figures in {out}" if wrote else ""))
    return 1 if any(r.status == "fail" for r in results) else 0
