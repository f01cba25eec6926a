"""Starting and resuming a training run from a recipe: the train-layer half of ``reproscope train``.

``open_run`` resolves the resume point and the run folder, ``start_trainer`` builds the Trainer
(resumed, or from given weights, or on the user's ``--model``; a resume's changed settings are
compared with the checkpoint's by ``resume_changes``), ``stop_on_signals`` turns SIGTERM/SIGINT
into a clean stop. ``reproscope.launch.train`` puts them together with the instruments and the figures.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Recipe, apply_overrides, recipe_from_dict
from ..console import log as console
from ..model.dtypes import MIXED_DTYPE, MixedDtypeError, dtype_message, dtype_outliers, is_dtype_error
from ..model.spec import factory_for, model_source, respec, spec_file, spec_in_run
from ..runfiles import CONFIG, METRICS, MODEL_SOURCE
from ..runtime import autocast, distributed, resolve_device, rng_state, set_rng_state
from .checkpoint import CheckpointError, listed_checkpoints, load_checkpoint, load_weights, read_manifest, saved_recipe
from .optim import WarmupCosine
from .rundir import new_run_dir, prepare_run_dir, read_metrics, record_resume_changes, truncate_metrics
from .trainer import Trainer


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGTERM/SIGINT: finish the current step, save a checkpoint, say how to resume. A second SIGINT
    interrupts at once. ``trainer.signal`` records which signal stopped the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop(f"received {signal.Signals(signum).name}", signal=signum)
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
              f"(Ctrl-C again to abort at once)", flush=True)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def find_resume_checkpoint(recipe: Recipe, run_dir: Path | None) -> Path | None:
    """``--resume auto``: the checkpoint with the highest step among those listed in the run folder's
    manifest (``checkpoints.json``) in ``run_dir``, or else in the newest run directory of this recipe
    under ``run.out_dir``. Files the manifest does not list are never opened. None when there is
    nothing to resume."""
    if run_dir is not None:
        dirs = [run_dir]
    else:
        parent = Path(recipe.run.out_dir)
        dirs = sorted(parent.glob(f"{recipe.name}-*"), key=lambda p: p.stat().st_mtime, reverse=True) \
            if parent.is_dir() else []
    for d in dirs:
        unlisted = sorted({p.name for p in d.glob("*.pt")} - set(read_manifest(d)))
        if unlisted:
            console.warning(f"resume auto: not opening {', '.join(unlisted)} in {d}: not in its checkpoint manifest "
                  f"(only checkpoints reproscope wrote are read; give a file explicitly with --resume PATH)")
        for _, c in listed_checkpoints(d):
            try:
                load_checkpoint(c)
            except CheckpointError as e:
                console.warning(f"resume auto: skipping {c}: {e}")
                continue
            return c
    return None


@dataclass(frozen=True)
class RunStart:
    """Where a ``train`` call starts: the recipe (the saved one when resuming), its run folder and the
    checkpoint to resume from (None for a new run)."""

    recipe: Recipe
    run_dir: Path
    ckpt: dict | None
    ckpt_path: Path | None
    created: bool = False  # this call made the run folder (``launch.train`` removes it when the start fails)


def open_run(recipe: Recipe, *, run_dir: str | Path | None = None, resume: str | None = None,
             overwrite: bool = False, overrides: list[str] | None = None, trust_pickle: bool = False) -> RunStart:
    """Resolve ``--resume`` (a file, a run folder or ``auto``), read the checkpoint weights-only (or
    unpickled with ``trust_pickle``), and create or reuse the run folder (rank 0; the others wait).

    Raises:
        CheckpointError: an unreadable, unsafe or mismatching checkpoint.
        RunDirError: ``run_dir`` exists and is not empty, without ``overwrite`` or ``resume``.
    """
    ckpt_path: Path | None = None
    rd = Path(run_dir) if run_dir else None
    if resume == "auto":
        ckpt_path = find_resume_checkpoint(recipe, rd)
        if ckpt_path is None:
            console.info("resume auto: no checkpoint found; starting a new run")
    elif resume:
        p = Path(resume)
        ckpt_path = p / "last.pt" if p.is_dir() else p
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, trust_pickle=trust_pickle)
        rd = ckpt_path.parent
        try:  # the recipe the checkpoint was trained with (config.json keeps the run's original one)
            recipe = recipe_from_dict(saved_recipe(ckpt))
        except KeyError:
            recipe = recipe_from_dict(json.loads((rd / CONFIG).read_text()))
        if overrides:
            recipe = apply_overrides(recipe, overrides)
            console.info(f"resume: applying overrides on top of the saved config: {' '.join(overrides)}")
        console.info(f"resuming {ckpt_path} at step {ckpt['step']}")
    d = distributed.from_env()
    if rd is None:
        rd = new_run_dir(recipe.run.out_dir, recipe.name)
    if d.enabled:
        distributed.init(d, resolve_device(recipe.precision.device).type)
        rd = Path(distributed.broadcast_object(str(rd), d))  # rank 0's timestamped name
    created = not rd.exists()
    if d.is_main:
        prepare_run_dir(rd, resume=resume is not None, overwrite=overwrite)
        if ckpt is not None:
            dropped = truncate_metrics(rd, int(ckpt["step"]))
            if dropped:
                console.info(f"resume: dropped {dropped} metrics.jsonl rows logged after step {ckpt['step']} (they are "
                      f"logged again as the run repeats those steps)")
    distributed.barrier(d)
    return RunStart(recipe, rd, ckpt, ckpt_path, created)


def start_trainer(start: RunStart, *, callbacks=(), download: bool = False, trust_pickle: bool = False,
                  weights: str | Path | None = None, model_spec: str | None = None) -> Trainer:
    """The Trainer for ``start``, resumed or started from ``weights``, ready to ``fit()``.

    ``model_spec``: train the user's model (``package.module:factory``, ``file.py:factory``,
    ``timm:NAME``) instead of ``model.name``; a file is copied into the run directory
    (``model_src/``) with its sha256 in ``model_source.json``, and a resume rebuilds it from there.
    ``weights``: start from these model weights (``.safetensors``, a state-dict ``.pt`` or a
    checkpoint), loaded strictly.

    Raises:
        CheckpointError: unreadable, unsafe or mismatching weights.
        MixedDtypeError (a ConfigError): a model whose floating parameters and buffers disagree in dtype
            and whose forward raises for it (``check_model_dtypes``), before any step and before the run
            record is written (``launch.train`` removes a new run's folder).
        UnusedParametersError (a ConfigError): under torchrun, trainable parameters that get no gradient
            (``check_unused_parameters``), likewise before any step.

    Under torchrun, a model with BatchNorm that normalises per process is said in a start line
    (``distributed.batchnorm_per_rank``).
    """
    recipe, rd, ckpt = start.recipe, start.run_dir, start.ckpt
    factory, source = None, None
    if model_spec is None and ckpt is not None and (rd / MODEL_SOURCE).is_file():
        source = json.loads((rd / MODEL_SOURCE).read_text())  # kept as written: the original spec
        spec = spec_in_run(source, rd)
        console.info(f"resume: rebuilding the run's own model from {spec}")
        factory = factory_for(spec, recipe.data.img_size)
    elif model_spec is not None:
        factory, source = _user_factory(model_spec, recipe, rd, distributed.from_env().is_main)
    trainer = Trainer(recipe, rd, callbacks=callbacks, download=download, model_factory=factory,
                      model_source=source)
    try:
        check_model_dtypes(trainer)
        check_unused_parameters(trainer)
    except (MixedDtypeError, distributed.UnusedParametersError):
        trainer.log.close()  # what the Trainer opened; a new run's folder is removed by the caller
        raise
    bn = distributed.batchnorm_per_rank(trainer.orig_model, recipe.data.batch_size, trainer.dist.world_size)
    if bn and trainer.dist.is_main:  # also a row of the run's deviations (rundir.write_run_record)
        console.warning(f"warning: {bn}")
    if ckpt is not None:
        if (rd / CONFIG).exists():
            changes = resume_changes(ckpt, recipe, trainer.steps_per_epoch)
            if changes and trainer.dist.is_main:
                record_resume_changes(rd, changes)
        trainer.load_state_dict(ckpt)
    elif weights is not None:
        load_into(trainer.orig_model, load_weights(weights, trust_pickle=trust_pickle), weights)
        console.info(f"weights: started from {weights}")
    return trainer


def check_model_dtypes(trainer: Trainer) -> None:
    """Refuse or warn about a model whose floating parameters and buffers disagree in dtype
    (``model.dtypes``), before its first step: when its forward raises on two validation images under
    the run's autocast, raise; when it runs anyway (CUDA autocast casts for it), warn once naming them.
    A model with one floating dtype costs nothing here (no forward).

    Raises:
        MixedDtypeError: naming each tensor and the fix (code ``mixed-dtype``).
    """
    model = trainer.orig_model
    outliers = dtype_outliers(model)
    if not outliers:
        return
    msg = dtype_message(model, outliers)
    saved = rng_state()  # reading a batch leaves the run's random streams as they were
    try:
        x, _ = next(iter(trainer.val_loader.epoch(0)))
    finally:
        set_rng_state(saved)
    was = model.training
    model.eval()  # no BatchNorm statistics move, no dropout draws
    try:
        with torch.no_grad(), autocast(trainer.device, trainer.amp_dtype):
            model(x[:2])
    except RuntimeError as e:
        if not is_dtype_error(e):
            raise
        raise MixedDtypeError(f"model: {msg} [{MIXED_DTYPE}; its forward raises: {str(e).strip().splitlines()[0]}]",
                              outliers) from None
    finally:
        model.train(was)
    if trainer.dist.is_main:
        console.warning(f"warning: model: {msg} [{MIXED_DTYPE}]")


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a forward's output: a tensor, or a (nested) tuple, list or dict of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def check_unused_parameters(trainer: Trainer) -> None:
    """Under torchrun without ``dist.find_unused_parameters``: the trainable parameters that get no gradient
    from the model's output, found before any step with one forward and backward in train mode on two
    validation images (``torch.autograd.grad(..., allow_unused=True)`` on the unwrapped model); DDP would
    stop at them at the second step with their indices only. Every process runs it (a SyncBatchNorm
    forward is collective) and rank 0's answer is taken by all; the model's buffers (BatchNorm statistics)
    and every random state are put back, and no ``.grad`` is touched. A forward that raises here finds
    nothing (the first step says what is wrong).

    Raises:
        UnusedParametersError: naming them, with the fixes (code ``ddp-unused-parameters``).
    """
    if not trainer.dist.enabled or trainer.recipe.dist.find_unused_parameters:
        return
    model = trainer.orig_model
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    saved, buffers, was = rng_state(), {k: b.detach().clone() for k, b in model.named_buffers()}, model.training
    names: list[str] = []
    try:
        x, _ = next(iter(trainer.val_loader.epoch(0)))
        model.train()
        with autocast(trainer.device, trainer.amp_dtype):
            outs = [t for t in _tensors(model(x[:2])) if t.requires_grad]
        grads = torch.autograd.grad(sum(t.float().sum() for t in outs), [p for _, p in named],
                                    allow_unused=True) if outs else [None] * len(named)
        names = [n for (n, _), g in zip(named, grads) if g is None]
    except Exception:  # noqa: BLE001 -- a check, not the run: the first step reports a model that cannot run
        names = []
    finally:
        model.train(was)
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        set_rng_state(saved)
    names = distributed.broadcast_object(names, trainer.dist)
    if names:
        raise distributed.UnusedParametersError(names)


def resume_changes(ckpt: dict, recipe: Recipe, steps_per_epoch: int) -> list[dict]:
    """The keys ``recipe`` changes against the recipe saved in ``ckpt`` (``run.*`` and ``instrument.*``
    aside), as ``{"key", "was", "now", "from_step"}`` rows; warns once naming them and, when the
    learning rate at the resumed step differs by more than 0.8-1.25x between the two schedules, the jump.
    A checkpoint without a saved recipe has no changes."""
    try:
        saved = saved_recipe(ckpt)
    except (KeyError, json.JSONDecodeError):
        return []
    now, step = recipe.to_dict(), int(ckpt["step"])
    changes = [{"key": f"{sec}.{k}", "was": v, "now": now.get(sec, {}).get(k), "from_step": step}
               for sec, vals in (saved or {}).items() if isinstance(vals, dict) and sec not in ("run", "instrument")
               for k, v in vals.items() if now.get(sec, {}).get(k) != v]
    if not changes:
        return []
    old = recipe_from_dict(saved)
    before = WarmupCosine.from_config(old.optim, old.sched, steps_per_epoch)(step)
    after = WarmupCosine.from_config(recipe.optim, recipe.sched, steps_per_epoch)(step)
    keys = ", ".join(f"{c['key']} {c['was']} -> {c['now']}" for c in changes)
    jump = f"; the lr at step {step} jumps {after / max(before, 1e-30):.3g}x ({before:.3g} -> {after:.3g})" \
        if not 0.8 <= after / max(before, 1e-30) <= 1.25 else ""
    console.warning("warning: resuming with changed settings (%s)%s; recorded as deviations from step %d, "
                    "config.json keeps the run's original settings", keys, jump, step)
    return changes


def load_into(model, state: dict, source) -> None:
    """``model.load_state_dict(state)`` strictly, with a one-line error naming the keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "")
        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({few(shapes)})" if shapes else ""]
        raise CheckpointError(f"weights in {source} do not fit the model: "
                              + "; ".join(p for p in parts if p) + "; check --recipe / model.* against the file")
    model.load_state_dict(state)


def _user_factory(spec: str, recipe: Recipe, rd: Path, is_main: bool):
    """(factory(num_classes) -> nn.Module, model_source dict) for ``--model SPEC``; a file spec is
    copied into ``rd/model_src/`` so the run can be rebuilt and replayed without the original."""
    source = model_source(spec)
    f = spec_file(spec)
    if f is not None and f.is_file() and f.resolve().parent != (rd / "model_src").resolve():
        dst = rd / "model_src" / f.name
        if is_main:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        source["copy"] = respec(spec, f"model_src/{f.name}")

    return factory_for(spec, recipe.data.img_size), source


def run_summary(trainer, wall_s: float, steps_before: int = 0) -> dict:
    """The end-of-run summary (written as ``summary.json`` by ``reproscope.launch.train``): final and
    best val top-1 with their epochs (1-based), steps, images seen, this process's wall time (s) and
    images/s over the steps it ran (``steps_before``: the step it resumed at), counts of each event
    type in ``metrics.jsonl``, and where the run's files are."""
    rows = read_metrics(trainer.run_dir) if (trainer.run_dir / METRICS).is_file() else []
    vals = [r for r in rows if r.get("kind") == "val" and "top1" in r]
    events: dict[str, int] = {}
    for r in rows:
        if r.get("kind") == "event":
            events[r.get("type", "?")] = events.get(r.get("type", "?"), 0) + 1
    best = max(vals, key=lambda r: r["top1"]) if vals else None
    per_step = trainer.recipe.data.batch_size * trainer.recipe.optim.accum_steps
    images = trainer.step * per_step
    return {
        "final_top1": vals[-1]["top1"] if vals else None, "final_epoch": vals[-1].get("epoch", 0) + 1 if vals else None,
        "best_top1": best["top1"] if best else None, "best_epoch": best.get("epoch", 0) + 1 if best else None,
        "steps": trainer.step, "images_seen": images, "wall_s": round(wall_s, 1),
        "img_per_s": round((trainer.step - steps_before) * per_step / wall_s, 1) if wall_s > 0 else None,
        "resumed_at_step": steps_before or None, "events": events,
        "stopped": trainer.stop_reason if trainer.stop_requested else (
            f"sched.max_steps={trainer.recipe.sched.max_steps}" if trainer.recipe.sched.max_steps
            and trainer.step >= trainer.recipe.sched.max_steps else None),
        "run_dir": str(trainer.run_dir), "tensorboard": str(trainer.run_dir / "tb"),
        "figures": str(trainer.run_dir / "figures"),
    }


def format_summary(s: dict) -> str:
    """The summary as the few lines printed at the end of ``reproscope train``."""
    ev = ", ".join(f"{k} {v}" for k, v in sorted(s["events"].items())) or "none"
    lines = []
    if s["final_top1"] is not None:
        lines.append(f"final val top-1 {s['final_top1']:.2f}% (epoch {s['final_epoch']}), best {s['best_top1']:.2f}% "
                     f"(epoch {s['best_epoch']})")
    since = f" since the resume at step {s['resumed_at_step']}" if s.get("resumed_at_step") else ""
    lines += [f"{s['steps']} steps, {s['images_seen']:,} images; {s['wall_s']:.0f} s{since} ({s['img_per_s'] or 0:,.0f} "
              f"img/s, evaluation and checkpoints included); events: {ev}",
              f"run directory: {s['run_dir']}  (summary.json, metrics.jsonl, figures/, tb/)"]
    return "\n".join(lines)
