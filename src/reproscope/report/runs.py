"""Read finished (or stopped) run directories: config, metrics, deviations, environment, events.

Only reads; shared by every command that reads runs (``report``, ``compare``, ``runs``, ``note``'s
report, ``audit``). A run trained by the Trainer and a loop watched with ``reproscope.watch`` are read
into the same :class:`RunRecord`; a setting a watched loop did not show is ``runfiles.NOT_OBSERVED``
(:meth:`RunRecord.value`), which prints as "not observed" and refuses arithmetic.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..runfiles import (
    CONFIG,
    DEVIATIONS,
    ENVIRONMENT,
    LOOP,
    METRICS,
    MODEL_SOURCE,
    NOT_OBSERVED,
    observed,
    read_json,
    read_value,
)
from ..train.events import event_type
from .paths import display_arg, display_command

# fields that may differ between seeds of one variant without making it another variant
REPEAT_KEYS = ("run.seed", "run.out_dir", "run.threads", "run.progress", "run.log_every", "run.ckpt_every",
               "run.keep_last", "data.workers", "data.cache_dir", "dist.find_unused_parameters")


def is_science(key: str) -> bool:
    """Config keys that can change a result: not seeds, threads, logging or instrumentation settings (a
    watched loop's own ``user_config.*seed*`` keys are seeds too)."""
    return key not in REPEAT_KEYS and not key.startswith(("run.", "instrument.", "ending.")) and not (
        key.startswith("user_config.") and "seed" in key.rsplit(".", 1)[-1].lower())


# a watched loop's facts that measure how long it ran, not what it was: never part of its variant
_LENGTH_KEYS = ("sched.epochs", "sched.total_steps", "sched.warmup_share", "sched.min_lr", "sched.max_steps")


@dataclass
class RunRecord:
    path: Path
    config: dict
    env: dict
    deviations: list[dict]
    train: list[dict]  # kind == "train" rows with a loss
    val: list[dict]  # kind == "val" rows
    events: list[dict]  # kind == "event" rows, types in train.events' words (older spellings read as today's)
    epoch_times: list[float] = field(default_factory=list)
    epoch_end_steps: list[int] = field(default_factory=list)
    epoch_steps: list = field(default_factory=list)  # steps each epoch_time_s covers (None in older logs)
    model_source: dict | None = None  # model_source.json: the user's --model spec, file sha256 and copy
    not_observed: list = field(default_factory=list)  # a watched loop's keys its audit could not compare
    loop: dict | None = None  # loop.json of a watched loop: facts, evidence, ending
    audited_against: str = ""  # deviations.json's parent: the recipe the deviations are held against

    @property
    def watched(self) -> bool:
        """Trained by the user's own loop under ``reproscope.watch`` (else by the Trainer)."""
        return self.loop is not None or self.config.get("name") == "watch"

    @property
    def trained_by(self) -> str:
        return "the user's own loop (reproscope.watch)" if self.watched else "reproscope's Trainer"

    def value(self, key: str):
        """The run's value of flat key ``key`` (``data.batch_size``): what its config holds, for a
        watched loop what the loop showed, else ``NOT_OBSERVED``."""
        v = self.flat_config().get(key, NOT_OBSERVED)
        return read_value(v)

    @property
    def ending(self) -> dict:
        """How the run ended: ``{"how", "step", "reason"}``. A watched loop records it (finished,
        stopped-nonfinite, stopped-diverging, interrupted, exception); a Trainer run's is read from its
        evaluations and events (finished, stopped-nonfinite, stopped-diverging, incomplete)."""
        if self.watched:
            e = (self.loop or {}).get("ending") or self.config.get("ending")
            return e or {"how": "finished", "step": self.steps, "reason": f"{self.steps} steps"}
        stop = next((e for e in self.events if e.get("type") in ("nonfinite", "grad-norm-overflow")
                     and e.get("policy", "stop") == "stop"), None)
        if stop is not None:
            how = "stopped-nonfinite" if stop["type"] == "nonfinite" else "stopped-diverging"
            what = "non-finite loss" if stop["type"] == "nonfinite" else "gradient norm overflow"
            return {"how": how, "step": stop["step"], "reason": f"stopped at step {stop['step']} ({what})"}
        epochs = self.value("sched.epochs")
        done = self.val[-1].get("epoch", -1) + 1 if self.val else 0
        if observed(epochs) and done >= epochs:
            return {"how": "finished", "step": self.steps, "reason": f"finished: {done} epochs, {self.steps} steps"}
        return {"how": "incomplete", "step": self.steps,
                "reason": f"incomplete: {done} of {epochs} epochs evaluated, {self.steps} steps"}

    @property
    def model(self) -> str:
        """The model trained: the user's ``--model`` spec (with the file's short sha256), else ``model.name``."""
        return self.model_label()

    def model_label(self, base: Path | None = None) -> str:
        """``model``, its spec's file shown relative to ``base`` (``paths.display_arg``) when given."""
        if self.model_source:
            sha = self.model_source.get("sha256")
            spec = self.model_source.get("spec", "?")
            return (spec if base is None else display_arg(spec, base)) + (f" (sha256 {sha[:12]})" if sha else "")
        return self.config.get("model", {}).get("name", "?")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe(self) -> str:
        return self.config.get("name", "?")

    @property
    def seed(self) -> int | None:
        """The run's seed: ``run.seed``; a watched loop's ``seed`` in its own config, else None (not given)."""
        if self.watched:
            s = self.config.get("user_config", {}).get("seed")
            return s if isinstance(s, int) else None
        return self.config.get("run", {}).get("seed", 0)

    @property
    def final(self) -> dict:
        return self.val[-1] if self.val else {}

    @property
    def steps(self) -> int:
        """Optimizer steps run: a watched loop's count (``loop.json``), else the last logged step."""
        logged = max((r["step"] for r in self.train), default=0)
        return max(logged, int((self.loop or {}).get("steps") or 0))

    def _batch(self):
        """Images per optimizer step (batch x accumulation), or ``NOT_OBSERVED``."""
        b, acc = self.value("data.batch_size"), self.value("optim.accum_steps")
        if not observed(b):
            return NOT_OBSERVED
        return b * (acc if observed(acc) else 1)

    @property
    def images_seen(self):
        """Training images seen (steps x batch x accumulation), or ``NOT_OBSERVED`` (no batch size shown)."""
        b = self._batch()
        return NOT_OBSERVED if b is NOT_OBSERVED else self.steps * b

    @property
    def images_per_epoch(self):
        """Images per epoch (the steps of the first evaluated epoch x batch), or ``NOT_OBSERVED`` (no
        epochs or no batch size shown)."""
        b = self._batch()
        if b is NOT_OBSERVED or not self.epoch_end_steps:
            return NOT_OBSERVED
        return self.epoch_end_steps[0] * b

    @property
    def complete(self) -> bool:
        """The run reached its planned end (a watched loop: it finished, not stopped or interrupted)."""
        return self.ending.get("how") == "finished"

    @property
    def device_hours(self) -> float:
        """Median epoch time x epochs run: robust to a run that was paused or shared its machine for a while.
        Where the run logged how many steps each timing covers (a part of an epoch after a resume), the
        median time per step x the steps run."""
        if not self.epoch_times:
            return 0.0
        steps = self.epoch_steps
        if steps and len(steps) == len(self.epoch_times) and all(steps):
            per_step = statistics.median(t / n for t, n in zip(self.epoch_times, steps))
            return per_step * sum(steps) / 3600
        return statistics.median(self.epoch_times) * len(self.epoch_times) / 3600

    @property
    def device(self) -> str:
        gpus = self.env.get("gpus") or []
        n = self.env.get("cpu_threads", "?")
        return gpus[0] if gpus else f"CPU ({n} thread{'' if n == 1 else 's'})"

    @property
    def command(self) -> str:
        return self.command_line()

    def command_line(self, base: Path | None = None) -> str:
        """The command that made the run (its recorded argv), its paths shown relative to ``base``
        (``paths.display_command``) when given."""
        argv = self.env.get("argv") or []
        if not argv:
            return f"reproscope train --recipe {self.recipe}"
        args = " ".join(argv[1:]) if base is None else display_command(argv[1:], base)
        prog = str(argv[0]).replace("\\", "/")
        if Path(prog).name == "reproscope" or prog.endswith("reproscope/__main__.py"):
            return ("reproscope " + args).rstrip()
        # a script that trained through the Python API (reproscope.watch, launch.train): that script ran
        shown = prog if base is None else display_command([prog], base)
        return ((f"python {shown} " if prog.endswith(".py") else f"{Path(prog).name} ") + args).rstrip()

    def flat_config(self) -> dict:
        """``section.key -> value``; a user's model adds ``model.source`` (its spec and file hash), so that
        two runs of different model files never count as one variant. A key the run's config lacks (a
        knob added after it ran, e.g. ``model.kernel_size``) takes today's default, the behaviour it had."""
        if self.watched:
            return self._watched_flat()
        out = {k: v for k, v in _config_defaults().items() if k.split(".")[0] in self.config}
        for section, vals in self.config.items():
            if isinstance(vals, dict) and section not in ("sources", "deviations"):
                for k, v in vals.items():
                    out[f"{section}.{k}"] = v
        if self.model_source:
            out["model.source"] = self.model
        return out

    def _watched_flat(self) -> dict:
        """A watched loop's flat config: what its loop showed (``loop.json``'s facts, the same the audit
        reads, so ``compare`` sees the eval mode and the decayed parameters too), its own ``user_config``,
        and ``NOT_OBSERVED`` for every recipe key it did not show; never a default."""
        out: dict = {}
        for section, vals in self.config.items():
            if isinstance(vals, dict) and section not in ("sources", "deviations", "ending"):
                for k, v in vals.items():
                    out[f"{section}.{k}"] = read_value(v)
        for k in self.config.get("not_observed", []):
            out.setdefault(k, NOT_OBSERVED)
        facts = (self.loop or {}).get("facts", {})
        out.update({k: v for k, v in facts.items() if k != "optim.decayed_no_decay_rules"})
        if self.model_source:
            out["model.source"] = self.model
        return out

    def variant_key(self) -> tuple:
        """What makes runs one variant: their science keys (floats to 4 significant digits; a watched
        loop's run-length facts left out, so a seed that stopped early stays with its variant)."""
        def norm(v):
            return float(f"{v:.4g}") + 0.0 if isinstance(v, float) and math.isfinite(v) else v  # -0.0 is 0.0
        flat = self.flat_config()
        return tuple(sorted((k, json.dumps(norm(v), default=str)) for k, v in flat.items()
                            if is_science(k) and not (self.watched and k in _LENGTH_KEYS)))


@functools.cache
def _config_defaults() -> dict:
    from ..config import Recipe, flat_items
    return flat_items(Recipe(name="", description=""))


def _shown(key: str, value, base: Path | None = None) -> str:
    """A config value in a group label: a model option left at its "the model's own" default says so; a
    path (data.root) relative to ``base`` (``paths.display_arg``) when given."""
    if key.startswith("model.") and value in (0, "default") and _config_defaults().get(key) == value:
        return "default"
    return display_arg(value, base) if base is not None and isinstance(value, str) else str(value)


def load_run(path: str | Path) -> RunRecord:
    p = Path(path)
    if not (p / CONFIG).exists():
        raise ConfigError(f"{p}: not a run directory (no config.json); give the folder `reproscope train` wrote")
    rows = []
    metrics = p / METRICS
    if metrics.exists():
        lines = metrics.read_text().splitlines()
        for i, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    if i < len(lines):  # only a torn last line is tolerated
                        raise ConfigError(f"{metrics}:{i}: not valid JSON") from None
    train = [r for r in rows if r.get("kind") == "train" and "loss" in r]
    devs = read_json(p / DEVIATIONS, {})
    return RunRecord(
        path=p, config=read_json(p / CONFIG, {}), env=read_json(p / ENVIRONMENT, {}),
        deviations=devs.get("deviations", []), not_observed=devs.get("not_observed", []), train=train,
        audited_against=devs.get("parent") or "",
        val=[r for r in rows if r.get("kind") == "val"],
        events=[{**r, "type": event_type(r)} for r in rows if r.get("kind") == "event"],  # today's words
        epoch_times=[r["epoch_time_s"] for r in rows if r.get("kind") == "train" and "epoch_time_s" in r],
        epoch_end_steps=[r["step"] for r in rows if r.get("kind") == "train" and "epoch_time_s" in r],
        epoch_steps=[r.get("epoch_steps") for r in rows if r.get("kind") == "train" and "epoch_time_s" in r],
        model_source=read_json(p / MODEL_SOURCE, None), loop=read_json(p / LOOP, None))


@dataclass
class Group:
    """Runs of one variant (same config but for the seed): the unit of a results row."""

    runs: list[RunRecord]
    label: str = ""

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    def metric(self, key: str = "top1") -> list[float]:
        return [r.final[key] for r in self.runs if key in r.final]

    def mean_std(self, key: str = "top1") -> tuple[float, float, int]:
        v = self.metric(key)
        if not v:
            return float("nan"), float("nan"), 0
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


MAX_MODEL_LABEL = 56  # characters of a model spec in a label (tables and figure legends)
MAX_LABEL_KEYS = 3  # settings named in a variant's label; the rest are counted ("+N more": see compare)


def _short_spec(label: str) -> str:
    """A model label whose spec carries long constructor arguments (``file.py:make:depth=4,...``): the
    arguments cut to fit ``MAX_MODEL_LABEL``; the file and factory are always kept whole."""
    head, sep, sha = label.partition(" (sha256 ")
    parts = head.split(":")
    if len(head) <= MAX_MODEL_LABEL or len(parts) < 3 or not parts[-2].isidentifier():
        return label
    keep = ":".join(parts[:-1])
    room = max(8, MAX_MODEL_LABEL - len(keep) - 2)
    return f"{keep}:{parts[-1][:room]}…" + (sep + sha if sep else "")


def _dumps(v) -> str:
    return json.dumps(v, default=str)


def group_runs(runs: list[RunRecord], base: Path | None = None) -> list[Group]:
    """Runs with the same config except seed-like fields form a group; labels name what differs (at most
    ``MAX_LABEL_KEYS`` settings, a watched loop's own ``user_config`` names first, then "+N more"), their
    paths (a user's model file, a data root) shown relative to ``base`` when given (a report's)."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        groups.setdefault(r.variant_key(), Group([])).runs.append(r)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: (r.seed is None, r.seed or 0, r.name))
    flat = [dict(g.first.variant_key()) for g in out]
    varying = sorted({k for f in flat for k in f if len({x.get(k) for x in flat}) > 1},
                     key=lambda k: (not k.startswith("user_config."), k))
    for g, key in zip(out, flat):
        f = g.first.flat_config()
        m = f.get("model.source") or f.get("model.name", "?")
        norm = f.get("model.norm", "default") if "model.source" not in f else "default"
        same_model = [x for x in flat if (x.get("model.source") or x.get("model.name")) == key.get(
            "model.source", key.get("model.name"))]
        extra = [f"{k.split('.')[-1]}={_shown(k, f.get(k), base)}" for k in varying
                 if k not in ("model.name", "model.norm", "model.source")
                 and not (k.startswith("model.dyt_") and norm != "dyt")  # DyT settings mean nothing for LN
                 # a model option that no other group of this model sets differently says nothing here
                 and not (k.startswith("model.") and len({x.get(k) for x in same_model}) == 1)]
        if len(extra) > MAX_LABEL_KEYS:
            extra = extra[:MAX_LABEL_KEYS] + [f"+{len(extra) - MAX_LABEL_KEYS} more"]
        shown = g.first.model_label(base) if "model.source" in f else _shown("model.name", m, base)
        shown = _short_spec(shown)
        g.label = f"{shown}" + (f" ({norm})" if norm != "default" else "") + (f" [{', '.join(extra)}]" if extra else "")
    return out


def t_critical_95(df: float) -> float:
    """Two-sided 95% Student-t critical value at ``df`` degrees of freedom, fractional ``df`` included
    (Welch's): the exact quantile ``scipy.stats.t.ppf(0.975, df)``, e.g. 6.02 at df 1.5, 4.30 at 2."""
    from scipy.stats import t
    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Interval:
    """A difference of means a - b with its 95% Welch interval: ``lo``/``hi`` are NaN with fewer than
    two values on a side (no interval), and equal ``d`` when every value on each side is the same."""

    d: float
    lo: float
    hi: float
    df: float  # Welch-Satterthwaite degrees of freedom (NaN without an interval)
    n_a: int
    n_b: int
    std_a: float
    std_b: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def welch_interval(a: list[float], b: list[float]) -> Interval:
    """Mean difference a - b and its 95% confidence interval (Welch's t, exact t quantile at the
    fractional Welch-Satterthwaite df)."""
    d = statistics.fmean(a) - statistics.fmean(b)
    sa = statistics.stdev(a) if len(a) > 1 else float("nan")
    sb = statistics.stdev(b) if len(b) > 1 else float("nan")
    nan = float("nan")
    if len(a) < 2 or len(b) < 2:
        return Interval(d, nan, nan, nan, len(a), len(b), sa, sb)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = (va + vb) ** 0.5
    if se == 0:
        return Interval(d, d, d, nan, len(a), len(b), sa, sb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = t_critical_95(df) * se
    return Interval(d, d - h, d + h, df, len(a), len(b), sa, sb)


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean difference a - b and its 95% confidence interval (Welch's t): ``(d, lo, hi)``."""
    i = welch_interval(a, b)
    return i.d, i.lo, i.hi


def seeds_for_half_width(std_a: float, std_b: float, target: float, most: int = 1000) -> int | None:
    """Seeds per variant (the same number on both sides) for which a 95% Welch interval at these seed
    standard deviations is at most ``target`` points wide on each side of the difference; None if
    more than ``most`` would be needed or the spreads are unknown."""
    if not target > 0 or math.isnan(std_a) or math.isnan(std_b):
        return None
    s2 = std_a ** 2 + std_b ** 2
    if s2 == 0:
        return 2
    for n in range(2, most + 1):
        df = s2 ** 2 * (n - 1) / (std_a ** 4 + std_b ** 4)
        if t_critical_95(df) * (s2 / n) ** 0.5 <= target:
            return n
    return None
