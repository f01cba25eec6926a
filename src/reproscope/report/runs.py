"""Read finished (or stopped) run directories: config, metrics, deviations, environment, events.

Only reads; shared by ``reproscope report`` and ``reproscope compare``.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..train.events import event_type
from .paths import display_arg, display_command

# fields that may differ between seeds of one variant without making it another variant
REPEAT_KEYS = ("run.seed", "run.out_dir", "run.threads", "run.progress", "run.log_every", "run.ckpt_every",
               "run.keep_last", "data.workers", "data.cache_dir")


def is_science(key: str) -> bool:
    """Config keys that can change a result: not seeds, threads, logging or instrumentation settings."""
    return key not in REPEAT_KEYS and not key.startswith(("run.", "instrument."))


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
    def seed(self) -> int:
        return self.config.get("run", {}).get("seed", 0)

    @property
    def final(self) -> dict:
        return self.val[-1] if self.val else {}

    @property
    def steps(self) -> int:
        return max((r["step"] for r in self.train), default=0)

    @property
    def images_seen(self) -> int:
        c = self.config
        return self.steps * c["data"]["batch_size"] * c["optim"].get("accum_steps", 1)

    @property
    def images_per_epoch(self) -> int:
        c = self.config
        spe = self.epoch_end_steps[0] if self.epoch_end_steps else 0
        return spe * c["data"]["batch_size"] * c["optim"].get("accum_steps", 1)

    @property
    def complete(self) -> bool:
        epochs = self.config["sched"]["epochs"]
        return bool(self.val) and self.val[-1].get("epoch", -1) + 1 >= epochs

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
        out = {k: v for k, v in _config_defaults().items() if k.split(".")[0] in self.config}
        for section, vals in self.config.items():
            if isinstance(vals, dict) and section not in ("sources", "deviations"):
                for k, v in vals.items():
                    out[f"{section}.{k}"] = v
        if self.model_source:
            out["model.source"] = self.model
        return out

    def variant_key(self) -> tuple:
        return tuple(sorted((k, json.dumps(v)) for k, v in self.flat_config().items() if is_science(k)))


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


def _read_json(path: Path, default):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e


def load_run(path: str | Path) -> RunRecord:
    p = Path(path)
    if not (p / "config.json").exists():
        raise ConfigError(f"{p}: not a run directory (no config.json); give the folder `reproscope train` wrote")
    rows = []
    metrics = p / "metrics.jsonl"
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
    devs = _read_json(p / "deviations.json", {})
    return RunRecord(
        path=p, config=_read_json(p / "config.json", {}), env=_read_json(p / "environment.json", {}),
        deviations=devs.get("deviations", []), not_observed=devs.get("not_observed", []), train=train,
        val=[r for r in rows if r.get("kind") == "val"],
        events=[{**r, "type": event_type(r)} for r in rows if r.get("kind") == "event"],  # today's words
        epoch_times=[r["epoch_time_s"] for r in rows if r.get("kind") == "train" and "epoch_time_s" in r],
        epoch_end_steps=[r["step"] for r in rows if r.get("kind") == "train" and "epoch_time_s" in r],
        epoch_steps=[r.get("epoch_steps") for r in rows if r.get("kind") == "train" and "epoch_time_s" in r],
        model_source=_read_json(p / "model_source.json", None))


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


def group_runs(runs: list[RunRecord], base: Path | None = None) -> list[Group]:
    """Runs with the same config except seed-like fields form a group; labels name what differs, their
    paths (a user's model file, a data root) shown relative to ``base`` when given (a report's)."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        groups.setdefault(r.variant_key(), Group([])).runs.append(r)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: r.seed)
    flat = [g.first.flat_config() for g in out]
    varying = sorted({k for f in flat for k in f if is_science(k) and len({json.dumps(x.get(k)) for x in flat}) > 1})
    for g, f in zip(out, flat):
        m = f.get("model.source") or f.get("model.name", "?")
        norm = f.get("model.norm", "default") if "model.source" not in f else "default"
        same_model = [x for x in flat if (x.get("model.source") or x.get("model.name", "?")) == m]
        extra = [f"{k.split('.')[-1]}={_shown(k, f.get(k), base)}" for k in varying
                 if k not in ("model.name", "model.norm", "model.source")
                 and not (k.startswith("model.dyt_") and norm != "dyt")  # DyT settings mean nothing for LN
                 # a model option that no other group of this model sets differently says nothing here
                 and not (k.startswith("model.") and len({json.dumps(x.get(k)) for x in same_model}) == 1)]
        shown = g.first.model_label(base) if "model.source" in f else _shown("model.name", m, base)
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
