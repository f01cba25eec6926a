"""What every check shares: the result record, the data a check sees, and the training run it drives.

A check gets ``make_model`` (a zero-argument factory for a fresh model) and :class:`CheckData`.
Checks that train drive a :class:`Run`: one optimizer step at a time, on a batch they choose or on
the next batch of the training stream. ``CheckData.runner`` builds the run; by default it is
:class:`ReferenceRun` (plain AdamW + cross-entropy), and for a recipe it is the project's own
Trainer (``checks/subject.py``), so that a bug in the step or the data pipeline shows up in the
checks exactly as it would in training.
"""

from __future__ import annotations

import copy
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..instrument.tripwire import format_report, locate_nonfinite
from ..runtime import seed_everything
from ..runtime.progress import LineProgress, progress


@dataclass
class CheckResult:
    """One check's verdict. ``causes[i]`` is a sentence for people and ``codes[i]`` its machine-readable
    code (e.g. "grad-leak", "eval-mode-differs"): programs (the bug zoo, tests) match codes, never wording."""

    name: str
    status: str  # "pass", "warn", "fail" or "skip" (not measured: neither a pass nor a fail; see NOT_MEASURED)
    measured: str
    expected: str
    explanation: str = ""
    causes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)  # one per cause, in the same order

    def __post_init__(self):
        if len(self.codes) != len(self.causes):
            raise ValueError(f"check {self.name}: {len(self.causes)} causes but {len(self.codes)} codes; "
                             "build them with Causes.add(code, sentence)")

    def summary(self) -> str:
        return f"{self.status.upper():4}  {self.name:<20} {self.measured}  (expected {self.expected})"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def measured_ok(self) -> bool:
        """False for a result that could not be measured (status "skip")."""
        return self.status != NOT_MEASURED


NOT_MEASURED = "skip"  # a check that could not measure on this model/size/budget says so: never pass, never fail
STATUSES = ("pass", "warn", "fail", NOT_MEASURED)


def tally(results) -> str:
    """The closing line of a diagnosis: 'N passed, M warned, K failed, J not measured'."""
    n = {s: sum(1 for r in results if r.status == s) for s in STATUSES}
    return f"{n['pass']} passed, {n['warn']} warned, {n['fail']} failed, {n[NOT_MEASURED]} not measured"


def not_measured(name: str, why: str, expected: str, explanation: str = "", details: dict | None = None,
                 code: str = "not-measured") -> CheckResult:
    """A "not measured" result: ``why`` says what stopped the measurement and what would measure it."""
    return CheckResult(name, NOT_MEASURED, f"not measured: {why}", expected, explanation, [why],
                       details or {}, [code])


class Causes:
    """Cause sentences and their codes, kept in step: ``c.add("grad-leak", "the gradient ...")``, then
    ``CheckResult(..., c.sentences, ..., codes=c.codes)``."""

    def __init__(self):
        self.sentences: list[str] = []
        self.codes: list[str] = []

    def add(self, code: str, sentence: str, *, first: bool = False) -> None:
        i = 0 if first else len(self.codes)
        self.codes.insert(i, code)
        self.sentences.insert(i, sentence)

    def extend(self, other: "Causes") -> None:
        self.sentences += other.sentences
        self.codes += other.codes

    def __bool__(self) -> bool:
        return bool(self.codes)

    def __contains__(self, code: str) -> bool:
        return code in self.codes


@dataclass
class StepOut:
    loss: float  # the loss the step trained on (its own criterion, e.g. with label smoothing)
    grad_norm: float  # the global gradient norm the optimizer stepped with (before clipping)
    report: object = None  # the NaN tripwire's report when the step was non-finite, if the runner has one


class Run(Protocol):
    """One training run on one model, stepped by a check."""

    model: nn.Module

    def step(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
             lr: float | None = None) -> StepOut:
        """One optimizer step on (x, y), or on the next batch of the training stream when x is None."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class DataSource:
    """The data pipeline behind a check batch (optional; enables the data and input-independence checks).

    Images are the stored uint8 tensors [N, 3, H, W] before any transform. ``val_batch()`` is the
    first batch of the validation pipeline, as the model sees it at evaluation; ``train_batch(i)``
    is training batch i, augmented as in training.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    train_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    val_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    class_names: list[str] = field(default_factory=list)


@dataclass
class CheckData:
    x: torch.Tensor  # a batch of model inputs, as the model sees them (normalised)
    y: torch.Tensor  # integer labels
    num_classes: int
    label_smoothing: float = 0.0
    lr: float = 1e-3
    val_x: torch.Tensor | None = None  # a held-out batch, as the model sees it at evaluation
    val_y: torch.Tensor | None = None
    source: DataSource | None = None
    runner: Callable[[nn.Module, bool], Run] | None = None  # (model, clean) -> Run; clean = no aug/smoothing
    out_dir: Path | None = None  # where checks write figures (contact sheet, lr sweep)
    quick: bool = False  # the quick tier: each check's short budget (fewer steps; see SLOW_CHECKS)
    workdir: object = None  # a TemporaryDirectory owned by this data (the runs' folders), if any

    def run(self, model: nn.Module, clean: bool = False) -> Run:
        return self.runner(model, clean) if self.runner is not None else ReferenceRun(model, self, clean)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.val_x is not None:
            return self.val_x, self.val_y
        half = len(self.x) // 2
        return self.x[half:], self.y[half:]

    def train_stream(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch i: the pipeline's, or a seeded draw from the first half of (x, y)."""
        if self.source is not None:
            return self.source.train_batch(i)
        n = len(self.x) // 2 if self.val_x is None else len(self.x)
        g = torch.Generator().manual_seed(1000 + i)
        idx = torch.randint(0, n, (min(32, n),), generator=g)
        return self.x[idx], self.y[idx]


class ReferenceRun:
    """AdamW (no weight decay) + cross-entropy, zero_grad after every step: the textbook step."""

    def __init__(self, model: nn.Module, data: CheckData, clean: bool):
        self.model, self.data = model, data
        self.smoothing = 0.0 if clean else data.label_smoothing
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=data.lr,
                                     weight_decay=0.0)
        self.i = 0

    def step(self, x=None, y=None, lr=None) -> StepOut:
        if x is None:
            x, y = self.data.train_stream(self.i)
        if lr is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr
        self.model.train()
        loss = F.cross_entropy(self.model(x), y, label_smoothing=self.smoothing)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], math.inf)
        if torch.isfinite(loss) and torch.isfinite(gn):
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.i += 1
        return StepOut(loss.item(), gn.item())

    def state_dict(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "i": self.i,
                              "rng": torch.get_rng_state()})

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.i = s["i"]
        torch.set_rng_state(s["rng"])


CHECKS: dict[str, Callable] = {}


def check(name: str):
    def deco(fn):
        CHECKS[name] = fn
        return fn
    return deco


def no_dropout(model: nn.Module) -> nn.Module:
    """Dropout and drop path off (train mode otherwise kept): ``nn.Dropout*`` (p), DropPath (ours: p;
    timm's: drop_prob) and torchvision's StochasticDepth (p)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if type(m).__name__ in ("DropPath", "StochasticDepth"):
            for attr in ("p", "drop_prob"):
                if isinstance(getattr(m, attr, None), float):
                    setattr(m, attr, 0.0)
    return model


def fresh(make_model, seed: int = 0, dropout: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    m = make_model()
    return m if dropout else no_dropout(m)


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated residual blocks, in order. By name first: ``blocks.N`` (ViT-style) or
    ``stages.N.M`` / ``stages.N.blocks.M``. Otherwise by structure (``structural_blocks``), so
    torchvision's ``layer1.0`` and ``features.3`` are found too."""
    out = [(n, m) for n, m in model.named_modules()
           if len(n.split(".")) >= 2 and n.split(".")[-1].isdigit() and n.split(".")[-2] == "blocks"]
    if not out:
        out = [(n, m) for n, m in model.named_modules() if n.count(".") == 2 and n.startswith("stages.")
               and n.split(".")[-1].isdigit()]
    return out or structural_blocks(model)


def structural_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Blocks found by structure, whatever their names: the outermost modules that (1) are children of
    a ``Sequential`` / ``ModuleList`` / ``ModuleDict``, (2) have submodules of their own and are not
    themselves such containers (a ``Sequential`` subclass such as torchvision's ``Conv2dNormActivation``
    is a layer group, not a block), and (3) are of a class with at least two such instances in the
    model and at least half as many as the most repeated class (so Swin's three ``PatchMerging`` layers
    between stages are not blocks), the class that occurs most in its container. E.g. ResNet ``layer1.0``..``layer4.1`` (BasicBlock),
    MobileNetV3 ``features.1``..``features.11`` (InvertedResidual), EfficientNet
    ``features.1.0``..``features.7.0`` (MBConv)."""
    def candidate(m: nn.Module) -> bool:
        return not isinstance(m, _CONTAINERS) and any(True for _ in m.children())

    counts: dict[type, int] = {}
    for parent in model.modules():
        if isinstance(parent, _CONTAINERS):
            for c in parent.children():
                if candidate(c):
                    counts[type(c)] = counts.get(type(c), 0) + 1
    top = max(counts.values(), default=0)
    repeated = {t for t, k in counts.items() if k >= 2 and 2 * k >= top}  # not a downsampling layer between stages
    chosen: dict[str, nn.Module] = {}
    for name, parent in model.named_modules():
        if not isinstance(parent, _CONTAINERS) or any(name.startswith(b + ".") or name == b for b in chosen):
            continue
        kids = [(f"{name}.{k}" if name else k, c) for k, c in parent.named_children()
                if candidate(c) and type(c) in repeated]
        if not kids:
            continue
        main = max({type(c) for _, c in kids}, key=lambda t: sum(1 for _, c in kids if type(c) is t))
        chosen.update((n, c) for n, c in kids if type(c) is main)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(chosen.items(), key=lambda t: order[t[0]])


MODEL_FREE = ("data",)  # checks that measure the data pipeline, not the model
# the quick tier (`diagnose all --quick`): every check but these, each with its short budget (CheckData.quick);
# input-independent trains for hundreds of steps, and its controls as many again
SLOW_CHECKS = ("input-independent",)
FORWARD_ONLY = ("loss-at-init", "init-scale")  # still measurable when only the backward is non-finite


def in_quick_tier(name: str) -> bool:
    return name not in SLOW_CHECKS


def nonfinite_at_init(make_model, data: CheckData, n: int = 16):
    """The tripwire's report (``NonFiniteReport``) when a fresh model's forward or backward on ``n``
    check images is non-finite, else None."""
    model = fresh(make_model).train()
    x, y = data.x[:n], data.y[:n]
    out = model(x)
    F.cross_entropy(out.float(), y).backward()
    grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    if bool(torch.isfinite(out).all()) and grads_ok:
        return None
    return locate_nonfinite(fresh(make_model).train(), [(x, y)], F.cross_entropy, step=0)


NONFINITE_MODEL = "nonfinite-model"  # the first check that meets a non-finite model: FAIL, with where it is born
NONFINITE_ELSEWHERE = "nonfinite-see-first"  # every later check: not measured, pointing at that first one


def _nonfinite_fail(name: str, report) -> CheckResult:
    """The first check that meets a model non-finite at init: FAIL with where the tripwire saw the first
    NaN/inf born (code ``nonfinite-model``)."""
    where = format_report(report).splitlines()[0].replace("NON-FINITE at step 0: ", "")
    return CheckResult(name, "fail", f"the fresh model's {report.phase} pass is non-finite",
                       "finite outputs and gradients", "Every quantity the checks measure would be NaN or inf; "
                       "the tripwire located where the first non-finite value is born (fix that first). The "
                       "checks after this one that measure the model are not measured.",
                       [f"non-finite {report.phase} at init, {where}"], {"tripwire": report.to_dict()},
                       [NONFINITE_MODEL])


def _nonfinite_skip(name: str, report, first: str) -> CheckResult:
    """A later check on a model non-finite at init: not measured (code ``nonfinite-see-first``), naming
    the check that reported the cause."""
    what = "output" if report.phase == "forward" else f"{report.phase} pass"
    why = f"the model's {what} is non-finite (see {first})"
    return not_measured(name, why, "finite outputs and gradients",
                        f"One root cause, reported once: {first} failed with where the first non-finite value "
                        f"is born; this check would measure NaN or inf until that is fixed.",
                        {"see": first, "phase": report.phase}, NONFINITE_ELSEWHERE)


def run_checks(make_model, data: CheckData, names: list[str] | None = None, progress: bool = False,
               total: int | None = None) -> list[CheckResult]:
    """Run the model/data checks (all by default) and return their results. A model whose forward or
    backward is non-finite at init is located once with the tripwire: the first check that measures
    the model fails with that cause (code ``nonfinite-model``) and every later one is not measured
    (status skip, code ``nonfinite-see-first``, naming the first) instead of measuring NaNs; checks
    that only need the forward pass still measure when only the backward is non-finite. With ``progress``,
    one line per check as its verdict lands (status, name, elapsed time, what it measured), and
    inside long checks a line at least every ~10 s (``check_progress``); ``total`` is the count the
    lines number against when the caller runs more checks after these (``diagnose``'s recipe-audit)."""
    out = []
    names = list(CHECKS) if names is None else names
    report, first = None, ""  # first: the check that reported a non-finite model
    if any(n not in MODEL_FREE for n in names):
        try:
            report = nonfinite_at_init(make_model, data)
        except Exception:  # a model that cannot run at all: each check says so (check-crashed)
            report = None
    _PROGRESS[0] = progress
    try:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            if report is not None and name not in MODEL_FREE and not (report.phase == "backward" and name in FORWARD_ONLY):
                out.append(_nonfinite_skip(name, report, first) if first else _nonfinite_fail(name, report))
                first = first or name
            else:
                seed_everything(0)  # every check starts from the same random state, whatever ran before it
                try:
                    out.append(CHECKS[name](make_model, data))
                except Exception as e:  # a check that crashes is itself a finding
                    out.append(CheckResult(name, "fail", f"raised {type(e).__name__}: {e}", "no error",
                                           "The check could not run on this model/data.", [str(e)],
                                           codes=["check-crashed"]))
            if progress:
                print(verdict_line(i + 1, total or len(names), out[-1], time.perf_counter() - t0), flush=True)
    finally:
        _PROGRESS[0] = False
    return out


def verdict_line(i: int, n: int, r: CheckResult, seconds: float, width: int | None = None) -> str:
    """``  [i/n] STATUS name  seconds s  measured``, cut at a word to fit one line of ``width`` columns
    (default: the terminal's, 100 when it has none)."""
    tag = f"[{i}/{n}]"
    head = f"  {tag:<{2 * len(str(n)) + 3}} {r.status.upper():4} {r.name:<20} {seconds:6.1f} s  "
    room = max(20, (width or shutil.get_terminal_size((100, 24)).columns) - len(head) - 1)
    text = r.measured if len(r.measured) <= room else r.measured[:room - 4].rsplit(" ", 1)[0] + " ..."
    return head + text


_PROGRESS = [False]  # set by run_checks(progress=True) while it runs


class _CheckLines(LineProgress):
    """``LineProgress`` that stays silent at the end of a loop that took under ``seconds``: the check's
    verdict line follows at once."""

    def update(self, k: int = 1) -> None:
        if self.n + k >= self.total and time.perf_counter() - self._last_t < self.seconds:
            self.n += k
            return
        super().update(k)


def check_progress(total: int, what: str):
    """Progress inside a long check (``total`` steps): when ``run_checks(progress=True)`` runs it, a line
    at least every ~10 s with the steps done, the rate and what is measured (``set_postfix``), from the
    trainer's progress module (``runtime.progress.LineProgress``); a check done within 10 s prints none.
    On a terminal it is one bar updated in place (tqdm, gone when the check ends), so a long sweep does not
    stack its lines above the verdict. Silent otherwise (``runtime.progress.progress(enabled=False)``)."""
    if not _PROGRESS[0]:
        return progress(total, desc=what, enabled=False)
    if sys.stderr.isatty():
        return progress(total, desc=f"      {what}", leave=False)
    return _CheckLines(total, desc=f"      {what}", unit="step", every=1.0, seconds=10.0, min_seconds=10.0)
