"""Run directories: the run record (config, environment, data, deviations, model source), metrics.jsonl
and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..model.counting import count_params
from ..model.observe import drop_path_rates, drop_path_rule
from ..recipes import deviation_log, get_recipe
from ..runfiles import CONFIG, METRICS, RECORD, RESUME_CHANGES, write_json
from ..runtime.distributed import batchnorm_deviations


class RunDirError(RuntimeError):
    pass


def new_run_dir(out_dir: str, recipe_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(out_dir) / f"{recipe_name}-{stamp}"
    n = 1
    while path.exists():  # two runs started in the same second
        n += 1
        path = Path(out_dir) / f"{recipe_name}-{stamp}-{n}"
    return path


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    if path.exists() and any(path.iterdir()) and not (resume or overwrite):
        raise RunDirError(f"run directory {path} already exists; pass --resume auto to continue it, "
                          f"--overwrite to replace its files, or choose another --run-dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _git_commit(*places: Path) -> str | None:
    """The git commit (with "-dirty" for uncommitted changes) of the first of ``places`` inside a git work
    tree (default: the current folder, then reproscope's own), or None."""
    here = Path(__file__).resolve().parent
    for cwd in places or (Path.cwd(), here):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
            if out.returncode == 0:
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                return out.stdout.strip() + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def environment() -> dict[str, Any]:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "argv": sys.argv,
        "hostname": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except Exception:  # torchvision is optional at run time for built-in data
        env["torchvision"] = None
    return env


def write_record(run_dir: Path, **files: Any) -> None:
    """The one writer of a run's record, for the Trainer (:func:`write_run_record`) and ``reproscope.watch``:
    each keyword names a file of ``runfiles.RECORD`` (``config=``, ``environment=``, ``deviations=``,
    ``model_source=``, ``loop=``, ``user_config=``, ``data=``, ``summary=``), written atomically.

    Raises:
        TypeError: a keyword that names no run-record file.
    """
    for key, obj in files.items():
        if key not in RECORD:
            raise TypeError(f"write_record: {key!r} is not a run-record file ({', '.join(RECORD)})")
        write_json(Path(run_dir) / RECORD[key], obj)


def run_environment(world_size: int, code: Path | None = None) -> dict[str, Any]:
    """``environment.json``'s content: :func:`environment` and the number of processes. ``code``: the folder
    of the code that trained (a watched loop's script): ``git_commit`` is then that folder's commit (None
    outside a git work tree) and reproscope's own goes to ``reproscope_commit``."""
    env = {**environment(), "world_size": world_size}
    if code is not None:
        env["reproscope_commit"] = _git_commit(Path(__file__).resolve().parent)
        env["git_commit"] = _git_commit(code)
    return env


def write_run_record(run_dir: Path, recipe, model: torch.nn.Module, *, world_size: int, splits: dict,
                     model_source: dict | None = None) -> None:
    """The run's record at the start of ``fit()``: ``config.json`` (only if absent: the run's original
    settings; changes on resume go to the deviations with their step), ``environment.json``,
    ``data.json`` (per split: name, images, classes, unreadable files skipped), ``deviations.json`` (the
    recipe against its parent, the keys changed on resume and, for a user model, what ``model`` is) and
    then ``model_source.json``. ``splits``: ``{"train": dataset, "val": dataset}``; ``model_source``: e.g.
    ``{"spec": ..., "file": ..., "sha256": ...}`` for a ``--model`` run. Under torchrun, a model with
    BatchNorm gets a row saying it normalises per process (``distributed.batchnorm_deviations``)."""
    devs = deviation_log(recipe) + resume_deviations(run_dir)
    if model_source is not None:
        paper = get_recipe(recipe.parent).model if recipe.parent else recipe.model
        devs = user_model_deviations(devs, paper, model, model_source["spec"])
    devs = devs + batchnorm_deviations(model, recipe.data.batch_size, world_size)
    if not (run_dir / CONFIG).exists():
        write_record(run_dir, config=recipe.to_dict())
    write_record(run_dir, environment=run_environment(world_size), data={
        split: {"name": ds.name, "images": len(ds), "classes": len(ds.classes), "skipped_unreadable": ds.skipped}
        for split, ds in splits.items()})
    if model_source is not None:
        write_record(run_dir, model_source=model_source)
    write_record(run_dir, deviations={"recipe": recipe.name, "parent": recipe.parent, "deviations": devs})


def _resume_changes(run_dir: Path) -> list[dict]:
    """Every resume's changes so far (``resume_changes.json``; none before the first)."""
    path = run_dir / RESUME_CHANGES
    return json.loads(path.read_text()) if path.is_file() else []


def record_resume_changes(run_dir: Path, changes: list[dict]) -> None:
    """Add ``changes`` (``{"key", "was", "now", "from_step"}`` rows) to ``resume_changes.json``, which
    keeps every resume's changes for the run's deviations."""
    old = _resume_changes(run_dir)
    new = [c for c in changes if c not in old]
    if new:
        write_json(run_dir / RESUME_CHANGES, old + new)


def resume_deviations(run_dir: Path) -> list[dict]:
    """Keys changed when this run was resumed (``resume_changes.json``), as deviation rows, each with the
    step from which it applies."""
    return [{"key": c["key"], "parent": c["was"], "value": c["now"],
             "reason": f"changed on resume from step {c['from_step']} (the steps before it ran with the parent value)"}
            for c in _resume_changes(run_dir)]


def user_model_deviations(devs: list[dict], paper_model, model: torch.nn.Module, spec: str) -> list[dict]:
    """For a ``--model`` run: the recipe's ``model.*`` rows describe a model that did not run, so they go;
    the model rows say what the user's model *is* (``spec``, parameter count, drop-path rates and their
    rule over depth, read from its modules) against the paper recipe's model config ``paper_model``."""
    n = count_params(model)
    rows = [{"key": "model.name", "parent": paper_model.name, "value": spec,
             "reason": f"the user's own model (--model), {n / 1e6:.2f}M parameters; the recipe's model.* "
                       f"keys do not apply to it"}]
    rates = [p for _, p in drop_path_rates(model)]
    rule, top = drop_path_rule(rates), max(rates, default=0.0)
    if top != paper_model.drop_path or (rule not in ("linear", "off")):
        rows.append({"key": "model.drop_path", "parent": paper_model.drop_path, "value": top,
                     "reason": f"observed in the user's model: {len(rates)} stochastic-depth modules, {rule} over depth"})
    return rows + [d for d in devs if not d["key"].startswith("model.")]


# TensorBoard's Time Series page sorts tag groups by name (character codes) and opens the first two; its
# Scalars tab also lists them in that order. The headline scalars keep ``train/`` and ``val/``; every other
# tag starts with ASIDE, which sorts after every letter, so a run opens on train and val.
ASIDE = "~"
TB_DIR = "tb"  # the run's TensorBoard folder: the headline, events, config text and hparams
TB_DETAIL = "detail"  # under TB_DIR: the probes' per-layer detail, its own run in TensorBoard


def tb_tag(kind: str, key: str) -> str:
    """The TensorBoard tag of value ``key`` of a ``metrics.jsonl`` row of ``kind``: the headline is
    ``train/`` loss, grad norm and lr (``lr_group<i>`` too) and every ``val/`` metric; the rest (epoch,
    epoch time, steps, img/s, skipped steps, events, a callback's own kinds) is ``~<kind>/<key>``."""
    headline = ((kind == "train" and (key in ("loss", "grad_norm") or key.startswith("lr")))
                or (kind == "val" and key != "epoch"))
    return f"{kind}/{key}" if headline else f"{ASIDE}{kind}/{key}"


class DetailWriter:
    """The TensorBoard writer of the per-layer detail (the probes' ``layers/``, ``params/``,
    ``nonfinite/`` scalars, ``grads/``, ``weights/``, ``outputs/`` histograms, ``figures/`` images):
    ``<run>/tb/detail``, which TensorBoard shows as a run of its own (untick it to hide the detail), each
    tag written as ``~<tag>`` so its groups sort after ``train/`` and ``val/``. The folder and its event
    file are made at the first tag; a run without probes has none."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self._w = None

    def _writer(self):
        if self._w is None:
            from torch.utils.tensorboard import SummaryWriter
            self._w = SummaryWriter(log_dir=str(self.log_dir))
        return self._w

    def add_scalar(self, tag: str, value, step: int) -> None:
        self._writer().add_scalar(ASIDE + tag, value, step)

    def add_histogram_raw(self, tag: str, global_step: int | None = None, **fields) -> None:
        self._writer().add_histogram_raw(ASIDE + tag, global_step=global_step, **fields)

    def add_image(self, tag: str, img, step: int, dataformats: str = "CHW") -> None:
        self._writer().add_image(ASIDE + tag, img, step, dataformats=dataformats)

    def flush(self) -> None:
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    def __enter__(self) -> DetailWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MetricsLog:
    """Appends one JSON line per record to metrics.jsonl and mirrors its numbers to TensorBoard: ``tb``
    (``<run>/tb``, tags by ``tb_tag``) and ``detail`` (a ``DetailWriter``, for the probes)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / METRICS
        self._f = open(self.path, "a", buffering=1)
        self.tb = self.detail = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(run_dir / TB_DIR))
            self.detail = DetailWriter(run_dir / TB_DIR / TB_DETAIL)

    def log(self, kind: str, step: int, **values: Any) -> None:
        rec = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(tb_tag(kind, k), v, step)

    def flush(self) -> None:
        self._f.flush()
        if self.tb is not None:
            self.tb.flush()
            self.detail.flush()

    def close(self) -> None:
        self.flush()
        self._f.close()
        if self.tb is not None:
            self.tb.close()
            self.detail.close()


class NullLog:
    """What ranks other than 0 log to: nothing."""

    tb = None
    detail = None

    def log(self, kind: str, step: int, **values: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the ``metrics.jsonl`` rows logged after ``step`` (a run resumed from a checkpoint at ``step``
    logs those steps again); returns how many were dropped. A torn last line is dropped too."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if rec.get("step", 0) > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)
    return dropped


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
    return out
