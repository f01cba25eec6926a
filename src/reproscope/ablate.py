"""`reproscope ablate RUN_DIR`: measure what each deviation from the paper recipe cost, at this scale.

A run's ``deviations.json`` lists every setting that departs from its parent recipe, with a reason.
``ablate`` reverts them one at a time (an *arm* per key: the run's config with that key set back to the
parent's value), trains each arm over ``--seeds`` seeds beside the base config over the same seeds, and
reports each effect, reverted minus base, in final (and best) val top-1 with its 95 % Welch interval
(``report.runs.welch_interval``; Welch 1938, the exact t quantile at the fractional df). An interval that
contains 0 is "not resolved at n = ...", never "no effect". ``--all`` adds one arm with every chosen key
reverted at once, to set the joint effect beside the sum of the single effects.

The scale itself (epochs, dataset, its size, image size, model size) is not ablated: reverting it is the
cost the reduced run avoids; it is listed as "not affordable here" with the time it would take.

Runs are ordinary run directories under ``RUN_DIR/ablation/<arm>-seed<S>`` (the base run itself is the
base arm's seed when it finished). A campaign stopped by a crash or Ctrl-C continues where it stopped when
invoked again: finished runs are read, unfinished ones resumed from their checkpoint (the Trainer resumes
at the exact step), so the same seeds give the same ``ablation.json``. All runs train in this one
process: imports, the decoded data cache and torch's start-up are paid once.

Budget: each run's time is estimated from the base run's measured wall time (``summary.json``), scaled by
the arm's optimizer steps; ``--keys auto`` takes the cheapest arms that fit ``--budget`` minutes, and any
plan over the budget is refused before training, with its estimate.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, apply_overrides, nearest, recipe_from_dict
from .console import log as console
from .recipes import NOT_DEVIATIONS
from .report.ablation import ablation_rows, duration, plot_effects
from .report.runs import is_science, load_run, welch_interval
from .runfiles import ABLATION, ABLATION_DIR, CONFIG, DEVIATIONS, LOOP, MODEL_SOURCE, SUMMARY, read_json, write_json

# keys that set the scale of the run: reverting them is what the reduced run cannot afford
SCALE_KEYS = ("sched.epochs", "sched.max_steps", "data.dataset", "data.train_size", "data.img_size", "model.name",
              "data.root", "data.cache_res", "model.patch_size")
# keys that change nothing a run measures (how it runs, not what it trains)
OPERATIONAL = ("data.workers", "data.cache_dir", "data.device_cache", "data.skip_corrupt", "data.val_size",
               "data.eval_batch_size", "precision.device", "precision.compile", "dist.find_unused_parameters",
               "dist.sync_bn") + tuple(NOT_DEVIATIONS)  # sync_bn: per-rank statistics are the scale of the machine


@dataclass(frozen=True)
class Arm:
    """One arm: ``name`` (a folder-safe slug), the keys it reverts and the values they take."""

    name: str
    reverts: dict  # key -> the parent's value

    @property
    def keys(self) -> list[str]:
        return sorted(self.reverts)


@dataclass
class Plan:
    """The campaign: arms (the base first), seeds, each run's estimated seconds, what is not affordable."""

    base_dir: Path
    arms: list[Arm]
    seeds: list[int]
    est_s: dict = field(default_factory=dict)  # (arm name, seed) -> seconds, for runs still to train
    unaffordable: list[dict] = field(default_factory=list)  # {"key", "from", "to", "est_s"}
    skipped: list[dict] = field(default_factory=list)  # {"key", "why"}

    @property
    def total_s(self) -> float:
        return sum(self.est_s.values())


def _slug(key: str) -> str:
    return key.replace(".", "-").replace("_", "-")


def run_dir_of(base: Path, arm: Arm, seed: int, base_seed: int) -> Path:
    """Where an arm's seed trains: the base run itself for the base arm at its own seed."""
    if arm.name == "base" and seed == base_seed:
        return base
    return base / ABLATION_DIR / f"{arm.name}-seed{seed}"


def _finished(run: Path) -> bool:
    if not (run / CONFIG).is_file() or not (run / SUMMARY).is_file():
        return False
    r = load_run(run)
    return r.complete and bool(r.val)


def load_base(run_dir: Path):
    """(recipe of the run, its deviation rows, its model spec or None).

    Raises:
        ConfigError: not a run directory, a watched loop (no config to re-run), or a run with no deviations.
    """
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.json); give a folder `reproscope train` wrote")
    if (run_dir / LOOP).is_file():
        raise ConfigError(f"{run_dir} is a loop watched with reproscope.watch: ablate re-runs a config, and a loop of "
                          f"yours is not one. Train your model with `reproscope train --model file.py:factory "
                          f"--recipe RECIPE --set ...` to ablate it; meanwhile the loop audit's consequence column "
                          f"(`reproscope audit {run_dir}"
                          f"{'' if read_json(run_dir / DEVIATIONS, None) else ' --against RECIPE'}`) says what each "
                          f"deviation is expected to do")
    recipe = recipe_from_dict(json.loads((run_dir / CONFIG).read_text()))
    rows = [d for d in read_json(run_dir / DEVIATIONS, {}).get("deviations", [])
            if is_science(d["key"]) and d["key"] not in OPERATIONAL and d["key"].count(".") == 1]
    spec = (read_json(run_dir / MODEL_SOURCE, None) or {}).get("spec")
    return recipe, rows, spec


def _steps(recipe) -> int:
    """Optimizer steps a recipe trains (its max_steps, else epochs x batches per epoch of its train set)."""
    from .instrument.loop_audit import steps_per_epoch
    spe = steps_per_epoch(recipe) or 1
    total = recipe.sched.epochs * spe
    return min(total, recipe.sched.max_steps) if recipe.sched.max_steps else total


def _base_seconds(run_dir: Path, recipe) -> float:
    """The base run's measured wall time (``summary.json``), per whole run; else its device-hours."""
    s = read_json(run_dir / SUMMARY, {}) or {}
    if s.get("wall_s") and s.get("steps"):
        return float(s["wall_s"]) * _steps(recipe) / max(1, int(s["steps"]))
    return load_run(run_dir).device_hours * 3600 or 60.0


def plan(run_dir: str | Path, keys: str = "auto", seeds: int = 3, budget_min: float | None = None,
         joint: bool = False) -> Plan:
    """The campaign for ``run_dir`` (see the module docstring).

    Args:
        keys: "auto", or comma-separated recipe keys among the run's deviations.
        seeds: seeds per arm (the base arm included), >= 2 for an interval.
        budget_min: minutes the runs still to train may take (None: no limit).
        joint: add the arm that reverts every chosen key at once.

    Raises:
        ConfigError: bad arguments, a key that is not a deviation of the run (the nearest named), or a plan
            over the budget (with its estimate).
    """
    base = Path(run_dir)
    recipe, rows, _ = load_base(base)
    if seeds < 2:
        raise ConfigError(f"--seeds {seeds}: an interval needs at least 2 seeds per arm (3 is the default)")
    if not _finished(base):
        raise ConfigError(f"{base} has not finished (no summary.json, or fewer evaluations than its epochs): finish it "
                          f"first (`reproscope train --resume {base}`), then ablate it")
    by_key = {d["key"]: d for d in rows}
    per_run = _base_seconds(base, recipe)
    base_steps = max(1, _steps(recipe))
    p = Plan(base, [Arm("base", {})], [recipe.run.seed + i for i in range(seeds)])
    for key in (k for k in by_key if k in SCALE_KEYS):
        arm_recipe = apply_overrides(recipe, {key: by_key[key]["parent"]})
        p.unaffordable.append({"key": key, "from": by_key[key]["value"], "to": by_key[key]["parent"],
                               "est_s": per_run * _steps(arm_recipe) / base_steps * seeds})
    if keys == "auto":
        wanted = [k for k in by_key if k not in SCALE_KEYS]
    else:
        wanted = [k.strip() for k in keys.split(",") if k.strip()]
        for k in wanted:
            if k not in by_key:
                raise ConfigError(f"--keys {k}: not a deviation of {base} from its parent recipe"
                                  f"{nearest(k, list(by_key))}; its deviations: {', '.join(by_key) or 'none'}")
    if not wanted:
        raise ConfigError(f"{base}: no deviation to ablate (deviations.json lists "
                          f"{', '.join(by_key) or 'none'}; the scale keys are not ablated)")
    arms = []
    for k in wanted:
        try:
            arm_recipe = apply_overrides(recipe, {k: by_key[k]["parent"]})
        except ConfigError as e:  # a parent value this config cannot take: say so, do not stop the campaign
            p.skipped.append({"key": k, "why": str(e)})
            continue
        arms.append((Arm(_slug(k), {k: by_key[k]["parent"]}), per_run * _steps(arm_recipe) / base_steps))
    if keys == "auto" and budget_min is not None:  # the cheapest arms that fit, the base's seeds first
        room = budget_min * 60 - _todo_seconds(p, [p.arms[0]], per_run)
        kept = []
        for arm, sec in sorted(arms, key=lambda a: a[1]):
            cost = _todo_seconds(p, [arm], sec)
            if cost <= room:
                kept.append((arm, sec))
                room -= cost
            else:
                p.skipped.append({"key": arm.keys[0], "why": f"over the budget ({cost / 60:.1f} min for {seeds} seeds)"})
        arms = kept
    p.arms += [a for a, _ in arms]
    if joint and len(arms) > 1:
        reverts = {k: v for a, _ in arms for k, v in a.reverts.items()}
        p.arms.append(Arm("all", reverts))
    for arm in p.arms:
        sec = per_run * _steps(apply_overrides(recipe, arm.reverts)) / base_steps
        for s in p.seeds:
            if not _finished(run_dir_of(base, arm, s, recipe.run.seed)):
                p.est_s[(arm.name, s)] = sec
    if budget_min is not None and p.total_s > budget_min * 60:
        dropped = [x["key"] for x in p.skipped if "budget" in x["why"]]
        raise ConfigError(f"the campaign needs about {p.total_s / 60:.1f} min ({len(p.est_s)} runs of ~"
                          f"{per_run / 60:.1f} min, from the base run's measured time) and --budget is {budget_min:g} "
                          f"min" + (f", even with {', '.join(dropped)} left out" if dropped else "")
                          + ": raise --budget, or give fewer --keys or --seeds")
    return p


def _todo_seconds(p: Plan, arms: list[Arm], sec: float) -> float:
    """Seconds the runs of ``arms`` still to train would take (the base run's seed is ``p.seeds[0]``)."""
    return sum(sec for a in arms for s in p.seeds if not _finished(run_dir_of(p.base_dir, a, s, p.seeds[0])))


def describe(p: Plan) -> str:
    """The plan as printed before training: arms, runs to train, estimated time, what is not affordable."""
    lines = [f"ablation of {p.base_dir}: {len(p.arms) - 1} arm(s) + base, seeds {', '.join(map(str, p.seeds))}; "
             f"{len(p.est_s)} run(s) to train, about {p.total_s / 60:.1f} min (from the base run's measured time)"]
    for a in p.arms:
        what = ", ".join(f"{k} -> {v!r}" for k, v in a.reverts.items()) or "the run's own config"
        todo = sum(1 for (n, _) in p.est_s if n == a.name)
        lines.append(f"  {a.name:<24} {what}  ({todo} to train)")
    for u in p.unaffordable:
        lines.append(f"  not affordable here: {u['key']} {u['from']!r} -> {u['to']!r} (about {duration(u['est_s'])} "
                     f"for {len(p.seeds)} seeds at this machine's speed; the cost is the point)")
    for s in p.skipped:
        lines.append(f"  not ablated: {s['key']}: {s['why']}")
    return "\n".join(lines)


def run_campaign(p: Plan, *, trainer=None, progress: bool = True) -> dict | None:
    """Train every run of ``p`` still to train, then write ``ablation.json`` and the figure; returns
    ``ablation.json``'s content, or None when a run was interrupted (Ctrl-C, SIGTERM: its checkpoint is
    saved; invoking the campaign again resumes it). ``trainer(recipe, run_dir, model_spec) -> bool`` (False:
    interrupted) trains one run; the default is ``launch.train`` resuming from the run's own checkpoint."""
    recipe, _, spec = load_base(p.base_dir)
    todo = [(a, s) for a in p.arms for s in p.seeds if (a.name, s) in p.est_s]
    train_one = trainer or _train
    t0, done_s = time.perf_counter(), 0.0
    for i, (arm, seed) in enumerate(todo):
        r = apply_overrides(recipe, {**arm.reverts, "run.seed": seed})
        rd = run_dir_of(p.base_dir, arm, seed, recipe.run.seed)
        rd.parent.mkdir(parents=True, exist_ok=True)
        console.info(f"ablate: run {i + 1} of {len(todo)}: {arm.name}, seed {seed} -> {rd}")
        if not train_one(r, rd, spec):
            console.warning(f"ablate: interrupted in {rd} (its checkpoint is saved); run the same `reproscope ablate` "
                            f"again to continue where it stopped")
            return None
        done_s += p.est_s[(arm.name, seed)]
        if progress:
            console.info(progress_line(i + 1, len(todo), done_s, p.total_s, time.perf_counter() - t0))
    result = summarize(p)
    write_json(p.base_dir / ABLATION_DIR / ABLATION, result)
    plot_effects(result, p.base_dir / ABLATION_DIR / "effects.png")
    return result


def _train(recipe, run_dir: Path, spec: str | None) -> bool:
    from .launch import train
    t, _ = train(recipe, run_dir=run_dir, resume="auto", model_spec=spec)
    return t.signal is None


def progress_line(done: int, n: int, done_s: float, total_s: float, elapsed: float, width: int = 24) -> str:
    """The campaign's bar: runs done of ``n``, the share of the estimated time, and the ETA at this pace."""
    frac = min(1.0, done_s / total_s) if total_s > 0 else done / max(1, n)
    eta = elapsed / frac - elapsed if frac > 0 else float("nan")
    bar = "#" * round(frac * width) + "-" * (width - round(frac * width))
    return f"ablation [{bar}] {done}/{n} runs, {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"


def _metric(run: Path) -> tuple[float | None, float | None]:
    r = load_run(run)
    tops = [v["top1"] for v in r.val if "top1" in v]
    return (tops[-1], max(tops)) if tops else (None, None)


def summarize(p: Plan) -> dict:
    """``ablation.json``: per arm its runs and final / best top-1 per seed; per reverting arm the effect
    (arm minus base) with its Welch interval, ranked by effect, and "resolved" (interval excludes 0); the
    joint arm beside the sum of the single effects."""
    recipe, rows, _ = load_base(p.base_dir)
    by_key = {d["key"]: d for d in rows}
    arms = {}
    for a in p.arms:
        runs = [run_dir_of(p.base_dir, a, s, recipe.run.seed) for s in p.seeds]
        vals = [_metric(r) if _finished(r) else (None, None) for r in runs]
        arms[a.name] = {"reverts": a.reverts, "runs": [str(r.relative_to(p.base_dir)) if r != p.base_dir else "."
                                                       for r in runs],
                        "final": [v[0] for v in vals], "best": [v[1] for v in vals]}
    base = arms["base"]
    effects = []
    for a in p.arms[1:]:
        e = {"arm": a.name, "keys": a.keys,
             "from": [by_key[k]["value"] for k in a.keys], "to": [a.reverts[k] for k in a.keys],
             "reason": [by_key[k].get("reason", "") for k in a.keys]}
        for metric in ("final", "best"):
            x = [v for v in arms[a.name][metric] if v is not None]
            y = [v for v in base[metric] if v is not None]
            if len(x) >= 2 and len(y) >= 2:
                iv = welch_interval(x, y)
                e[metric] = {"effect": iv.d, "lo": iv.lo, "hi": iv.hi, "n": [iv.n_a, iv.n_b],
                             "resolved": not (math.isnan(iv.lo) or iv.lo <= 0 <= iv.hi)}
            else:
                e[metric] = {"effect": None, "lo": None, "hi": None, "n": [len(x), len(y)], "resolved": False}
        effects.append(e)
    singles = [e for e in effects if e["arm"] != "all"]
    singles.sort(key=lambda e: -abs(e["final"]["effect"] or 0.0))
    joint = next((e for e in effects if e["arm"] == "all"), None)
    out = {"base_run": str(p.base_dir), "seeds": p.seeds, "metric": "val top-1 (%)", "arms": arms,
           "effects": singles, "unaffordable": p.unaffordable, "skipped": p.skipped}
    if joint is not None:
        known = [e["final"]["effect"] for e in singles if e["final"]["effect"] is not None]
        out["joint"] = {**joint, "sum_of_singles": sum(known) if len(known) == len(singles) else None}
    return out


def sentence(e: dict, metric: str = "final") -> str:
    """An effect as one sentence: its size and interval, or "not resolved at n = a + b"."""
    m = e[metric]
    what = ", ".join(f"{k} {f!r} -> {t!r}" for k, f, t in zip(e["keys"], e["from"], e["to"]))
    if m["effect"] is None:
        return f"reverting {what}: not measured (fewer than 2 finished seeds on a side)"
    ci = f"95 % CI [{m['lo']:+.2f}, {m['hi']:+.2f}]"
    if m["resolved"]:
        return f"reverting {what}: {m['effect']:+.2f} points {metric} top-1 ({ci}, n = {m['n'][0]} + {m['n'][1]})"
    return (f"reverting {what}: {m['effect']:+.2f} points {metric} top-1, not resolved at n = {m['n'][0]} + "
            f"{m['n'][1]} ({ci} contains 0)")


def format_table(result: dict) -> str:
    """The effects as the Markdown table ``reproscope report`` and the README show (``report.ablation``)."""
    head = ["reverted", "ours -> parent", "effect", "95 % CI", "n", "says"]
    rows = ablation_rows(result)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def ablate(run_dir: str, keys: str = "auto", seeds: int = 3, budget: float | None = None, joint: bool = False,
           dry_run: bool = False) -> int:
    """The command: print the plan, train what is missing, print the effects ranked. 0 on success.

    Raises:
        ConfigError: see :func:`plan`.
    """
    p = plan(run_dir, keys, seeds, budget, joint)
    print(describe(p))
    if dry_run:
        return 0
    result = run_campaign(p)
    if result is None:
        return 130
    print(f"\nwhat each deviation cost at this scale ({p.base_dir / ABLATION_DIR / ABLATION}):")
    print(format_table(result))
    for e in result["effects"]:
        print("  " + sentence(e))
    if "joint" in result:
        j = result["joint"]
        s = j.get("sum_of_singles")
        print("  " + sentence(j) + (f"; the single effects sum to {s:+.2f}" if s is not None else ""))
    base = [v for v in result["arms"]["base"]["final"] if v is not None]
    if base:
        print(f"  base: {statistics.fmean(base):.2f} top-1 over {len(base)} seeds; figure: "
              f"{p.base_dir / ABLATION_DIR / 'effects.png'}")
    return 0
