"""What a user's own training loop does, read from torch's hooks: the loop's half of the recipe.

``reproscope.watch`` attaches a :class:`LoopObserver`; the user calls nothing more. What it reads,
and from where:

- **optimizer** (``Optimizer.register_step_pre_hook``): class, per-group lr / betas / momentum /
  nesterov / eps / weight decay, which parameters each group decays (by name and kind: 1-D, position
  embedding, class token, ``no_weight_decay()``, the kinds of ``train.optim.decay_rules``), and the
  lr of every group at every optimizer step;
- **schedule**: read from that lr curve (:func:`.schedule.read_schedule`): peak, warmup, decay shape,
  final lr, whether the lr changes per step or per epoch;
- **step**: the gradient norm at the end of backward (``Tensor.register_post_accumulate_grad_hook``)
  against the norm the optimizer sees: clipping and its max norm, a GradScaler's scale (a ratio that
  is a power of two; with ``scaler=``, ``scaler.get_scale()`` at the clipped steps,
  ``precision.scale_at_clip``, so that a clip applied to the scaled gradients, before
  ``scaler.unscale_``, is told apart); train-mode forwards per optimizer step (accumulation); batch
  and image size. Under DDP (``world_size > 1``) the gradient
  all-reduce changes the norm between the end of backward and the step, so no clip is read there
  (``optim.grad_clip`` is not observed; ``details["clipping"]["note"]`` says why);
- **targets and loss** (``Watch.step(loss, targets=)``): hard or soft targets, label smoothing (the
  floor of soft targets x K; for hard targets, solved from the loss, the logits and the targets:
  ``loss = (1 - eps) * nll + eps * mean(-log p)``, or read from ``criterion=`` when it is an
  ``nn.CrossEntropyLoss``), mixed targets (mixup / cutmix), the number of classes;
- **model-side regularisation**: the drop-path rate of every module that has one (timm's
  ``drop_prob``, torchvision's ``StochasticDepth`` / our ``DropPath`` ``p``, duck-typed) and its rule
  over depth (linear as in the papers, or constant); dropout rates;
- **precision**: the autocast dtype in effect inside the forward (``torch.is_autocast_enabled`` /
  ``get_autocast_dtype``), the parameters' dtype, a GradScaler, TF32 flags (CUDA), channels_last
  inputs, ``torch.compile``;
- **EMA** (``ema=``: ``torch.optim.swa_utils.AveragedModel``, timm's ``ModelEma*``, or any object with
  a ``decay``): its decay and horizon, and whether an evaluation ran the EMA weights;
- **evaluation**: whether the model was in train mode in the forwards before ``Watch.evaluate``, and
  which of the modules that train mode changes the model has (``eval.train_mode_modules``: BatchNorm,
  dropout, drop path; :func:`train_mode_modules`).

Gradient norms are measured on the first ``MEASURE_FIRST`` optimizer steps and every
``MEASURE_EVERY`` after (our choice, to keep the cost under 1 % of a step; see
``benchmarks/instrument_overhead.py``). Everything else is read every step from values torch
already holds.

:meth:`LoopObserver.facts` returns the observations as flat recipe keys (``optim.lr``,
``sched.warmup_epochs``, ``aug.mixup_alpha`` ...) plus a few keys a recipe does not have
(``sched.decay``, ``data.shuffle``, ``eval.train_mode`` ...): the vocabulary of
:mod:`.loop_audit`, which holds them against a paper recipe.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.observe import drop_path_rates, drop_path_rule
from ..train.optim import decay_rules
from .schedule import read_schedule

MEASURE_FIRST = 20  # optimizer steps whose gradient norms are all measured
MEASURE_EVERY = 25  # then one step in this many
SMOOTHING_STEPS = 8  # steps on which label smoothing is solved from the loss


def _is_pow2(x: float) -> bool:
    return x > 0 and math.isfinite(x) and abs(math.log2(x) - round(math.log2(x))) < 1e-3


def ema_decay(ema) -> tuple[float | None, str]:
    """(decay, kind) of an EMA object: timm ``ModelEma*`` / reproscope's ``ModelEma`` / anything with a
    float ``decay``; torch's ``AveragedModel`` reads the ``decay`` its ``get_ema_multi_avg_fn`` /
    ``get_ema_avg_fn`` closure holds (an ``AveragedModel`` without an averaging function is an equal
    average: SWA, decay None)."""
    d = getattr(ema, "decay", None)
    if isinstance(d, (int, float)):
        return float(d), type(ema).__name__
    if type(ema).__name__ == "AveragedModel":
        for fn in (getattr(ema, "multi_avg_fn", None), getattr(ema, "avg_fn", None)):
            fn = inspect.unwrap(fn) if fn is not None else None  # torch wraps them in no_grad
            code = getattr(fn, "__code__", None)
            if code is not None and "decay" in code.co_freevars:
                return float(fn.__closure__[code.co_freevars.index("decay")].cell_contents), "AveragedModel"
        return None, "AveragedModel (equal average, SWA)"
    return None, type(ema).__name__


def _ema_module(ema) -> nn.Module | None:
    """The module holding the averaged weights: ``ema.module`` (AveragedModel, timm's ModelEma*, ours),
    which runs whether the loop calls ``ema(x)`` or ``ema.module(x)``; else ``ema`` itself."""
    m = getattr(ema, "module", None)
    if isinstance(m, nn.Module):
        return m
    return ema if isinstance(ema, nn.Module) else None


def train_mode_modules(model: nn.Module) -> list[str]:
    """Which modules that behave differently in train mode ``model`` has, in this order: "BatchNorm"
    (a ``_BatchNorm`` tracking running statistics: train mode normalises with the batch's), "dropout"
    (an ``nn.Dropout*`` with p > 0), "drop path" (a stochastic-depth module with a rate > 0,
    ``model.observe.drop_path_rates``). A module that tests ``self.training`` itself is not seen."""
    kinds = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules()):
        kinds.append("BatchNorm")
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        kinds.append("dropout")
    if any(r > 0 for _, r in drop_path_rates(model)):
        kinds.append("drop path")
    return kinds


def _amp_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


class LoopObserver:
    """Reads a training loop through hooks (see the module docstring). ``attach()`` once, ``detach()``
    on exit; ``on_step`` from ``Watch.step``, ``on_evaluate`` from ``Watch.evaluate``.

    ``model``: the uncompiled module; ``compiled``: whether the user's model was ``torch.compile``d;
    ``world_size``: processes (the global batch is the per-process batch x world size).
    """

    def __init__(self, model: nn.Module, optimizer=None, *, scaler=None, criterion=None, ema=None,
                 compiled: bool = False, world_size: int = 1):
        self.model, self.optimizer, self.scaler, self.criterion, self.ema = model, optimizer, scaler, criterion, ema
        self.compiled, self.world_size = compiled, world_size
        self.names = {p: n for n, p in model.named_parameters()}
        self.lrs: list[list[float]] = []  # per optimizer step, one lr per group
        self.opt_steps = 0
        self._train_forwards = 0  # since the last optimizer step
        self.forwards_per_step: Counter = Counter()
        self.batch_sizes: Counter = Counter()
        self.img_sizes: Counter = Counter()
        self.amp: Counter = Counter()
        self.channels_last: Counter = Counter()
        self._eval_forwards = {"train_mode": 0, "eval_mode": 0, "ema": 0}
        self.evals: list[dict] = []
        self._backward_sq: dict[int, torch.Tensor] = {}
        self._measure = True
        self.norms: list[tuple[float, float]] = []  # (norm at end of backward, norm the optimizer saw)
        self.norm_scales: list[float | None] = []  # the GradScaler's scale at each of those steps (scaler=)
        self.num_classes: int | None = None
        self._last_logits: torch.Tensor | None = None
        self.targets = {"hard": 0, "soft": 0, "mixed": 0, "none": 0}
        self.smoothing: list[float] = []
        self.smoothing_unsolved = 0
        self._handles: list = []

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_opt_step))
        # the hooks run eagerly under torch.compile: traced, their counters would recompile the model's graph
        eager = torch.compiler.disable
        self._handles.append(self.model.register_forward_hook(eager(self._after_forward)))
        for p in self.model.parameters():
            if p.requires_grad and self.world_size == 1:  # under DDP the norms are not comparable (clipping())
                self._handles.append(p.register_post_accumulate_grad_hook(eager(self._grad_ready)))
        em = _ema_module(self.ema)
        if em is not None:
            self._handles.append(em.register_forward_hook(eager(self._ema_forward)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _grad_ready(self, p: torch.Tensor) -> None:
        if self._measure and p.grad is not None:
            self._backward_sq[id(p)] = p.grad.detach().float().pow(2).sum()

    def _after_forward(self, module, args, out) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if not torch.is_grad_enabled():  # an evaluation forward
            self._eval_forwards["train_mode" if module.training else "eval_mode"] += 1
            return
        if not module.training:
            return
        self._train_forwards += 1
        if x is not None:
            self.batch_sizes[int(x.shape[0]) * self.world_size] += 1
            if x.ndim == 4:
                self.img_sizes[int(x.shape[-1])] += 1
                self.channels_last[bool(x.is_contiguous(memory_format=torch.channels_last)
                                        and not x.is_contiguous())] += 1
            dev = x.device.type
            self.amp[_amp_name(torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else
                     _amp_name(x.dtype if x.is_floating_point() else None)] += 1
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            self.num_classes = int(out.shape[1])
            self._last_logits = out.detach() if len(self.smoothing) + self.smoothing_unsolved < SMOOTHING_STEPS else None

    def _ema_forward(self, module, args, out) -> None:
        if not torch.is_grad_enabled():
            self._eval_forwards["ema"] += 1
            if module.training:  # the EMA evaluated in train mode is the same mistake
                self._eval_forwards["train_mode"] += 1

    def _before_opt_step(self, optimizer, args, kwargs) -> None:
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        self.forwards_per_step[self._train_forwards] += 1
        self._train_forwards = 0
        if self._measure and self._backward_sq:
            seen = torch.nn.utils.get_total_norm([p.grad for g in optimizer.param_groups for p in g["params"]
                                                  if p.grad is not None])
            at_backward = torch.stack(list(self._backward_sq.values())).sum().sqrt()
            self.norms.append(tuple(torch.stack([at_backward, seen.float()]).tolist()))
            scaler_on = self.scaler is not None and self.scaler.is_enabled()
            self.norm_scales.append(float(self.scaler.get_scale()) if scaler_on else None)  # before update()
        self._backward_sq = {}
        self.opt_steps += 1
        self._measure = self.opt_steps < MEASURE_FIRST or self.opt_steps % MEASURE_EVERY == 0

    # ------------------------------------------------------------------ from Watch
    def on_step(self, loss: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Targets and loss of this step (called from ``Watch.step``)."""
        if targets is None:
            self.targets["none"] += 1
            return
        if targets.is_floating_point() and targets.ndim == 2:
            self._soft(targets.detach().float())
        else:
            self.targets["hard"] += 1
            if self._last_logits is not None and self._last_logits.shape[0] == targets.shape[0]:
                self._solve_smoothing(loss, targets)
        self._last_logits = None

    def _soft(self, t: torch.Tensor) -> None:
        self.targets["soft"] += 1
        k = t.shape[1]
        floor = float(t.min())
        self.smoothing.append(round(floor * k, 4))
        big = (t > floor + 1e-6).sum(1)
        if bool((big > 1).any()):
            self.targets["mixed"] += 1

    def _solve_smoothing(self, loss: torch.Tensor, y: torch.Tensor) -> None:
        logp = F.log_softmax(self._last_logits.float(), dim=1)
        nll = float(F.nll_loss(logp, y))
        uniform = float(-logp.mean())
        lv = float(loss.detach())
        if abs(uniform - nll) < 1e-3 * max(1.0, nll) or not math.isfinite(lv):
            self.smoothing_unsolved += 1
            return
        eps = (lv - nll) / (uniform - nll)
        if -0.01 <= eps <= 1.0:
            self.smoothing.append(round(max(eps, 0.0), 2))
        else:
            self.smoothing_unsolved += 1  # the loss is not the cross-entropy of these targets (mixing, a scaled loss)

    def on_evaluate(self) -> dict:
        """How the evaluation since the last call ran: ``{"train_mode": forwards in train mode,
        "eval_mode": ..., "ema": forwards of the EMA model}`` (no-grad forwards)."""
        ev, self._eval_forwards = self._eval_forwards, {"train_mode": 0, "eval_mode": 0, "ema": 0}
        self.evals.append(ev)
        return ev

    # ------------------------------------------------------------------ the reading
    def optimizer_facts(self) -> dict:
        """Per-group settings and which parameters each group decays, by kind."""
        opt = self.optimizer
        if opt is None:
            return {}
        rules = decay_rules(self.model)
        groups = []
        for i, g in enumerate(opt.param_groups):
            names = [self.names.get(p, "?") for p in g["params"]]
            kinds = Counter(rules.get(n, "decay") for n in names)
            groups.append({"index": i, "lr": g.get("lr"), "initial_lr": g.get("initial_lr"),
                           "weight_decay": g.get("weight_decay", 0.0), "betas": list(g["betas"]) if "betas" in g else None,
                           "momentum": g.get("momentum"), "nesterov": g.get("nesterov"), "eps": g.get("eps"),
                           "params": len(names), "kinds": dict(kinds)})
        decayed_no_decay = sorted(n for g in opt.param_groups if g.get("weight_decay", 0) > 0
                                  for n in (self.names.get(p, "?") for p in g["params"])
                                  if rules.get(n, "decay") != "decay")
        return {"class": type(opt).__name__, "groups": groups, "decayed_no_decay": decayed_no_decay,
                "rules": {n: rules[n] for n in decayed_no_decay}}

    def clipping(self) -> dict:
        """``{"measured": steps, "clipped": steps, "max_norm": float | None, "scale": GradScaler scale read
        from a power-of-two ratio, "scale_at_clip": the median of scaler.get_scale() at the clipped steps
        (None without scaler=)}``. Under DDP nothing is measured: ``{"measured": 0, ..., "note": why}``."""
        if self.world_size > 1:
            return {"measured": 0, "clipped": 0, "max_norm": None, "scale": None, "scale_at_clip": None,
                    "note": f"not read under DDP ({self.world_size} processes): the gradient all-reduce changes "
                            f"the norm between the end of backward and the optimizer step, so their ratio is not "
                            f"a clip"}
        clipped, scales, scale = [], [], None
        for (at_backward, seen), s in zip(self.norms, self.norm_scales):
            if not (math.isfinite(at_backward) and math.isfinite(seen)) or at_backward == 0:
                continue
            ratio = seen / at_backward
            if ratio < 0.999 and _is_pow2(1 / ratio):  # unscaled by a GradScaler between backward and step
                scale = 1 / ratio
                continue
            if ratio < 0.999:
                clipped.append(seen)
                if s is not None:
                    scales.append(s)
        return {"measured": len(self.norms), "clipped": len(clipped),
                "max_norm": statistics.median(clipped) if clipped else None, "scale": scale,
                "scale_at_clip": statistics.median(scales) if scales else None}

    def facts(self, steps_per_epoch: int | None = None) -> tuple[dict, dict]:
        """(facts, details): flat recipe keys observed (absent = not observed), and the evidence behind
        them (per-group settings, the schedule reading, drop-path rates ...) for ``loop.json``."""
        f: dict = {}
        d: dict = {}
        opt = self.optimizer_facts()
        if opt:
            d["optimizer"] = opt
            name = opt["class"].lower()
            f["optim.name"] = name
            decaying = [g for g in opt["groups"] if g["weight_decay"]]
            f["optim.weight_decay"] = max((g["weight_decay"] for g in decaying), default=0.0)
            g0 = max(opt["groups"], key=lambda g: g["params"])
            if g0["betas"]:
                f["optim.beta1"], f["optim.beta2"] = g0["betas"]
            elif g0["momentum"] is not None:
                f["optim.beta1"] = g0["momentum"]
            if g0["eps"] is not None:
                f["optim.eps"] = g0["eps"]
            f["optim.decayed_no_decay"] = opt["decayed_no_decay"]
            f["optim.decayed_no_decay_rules"] = opt["rules"]
        if self.lrs:
            main = max(range(len(self.lrs[0])), key=lambda i: opt["groups"][i]["params"] if opt else 0)
            reading = read_schedule([row[main] for row in self.lrs], steps_per_epoch)
            d["schedule"] = reading.to_dict()
            d["lr_groups"] = [{"peak": max(r[i] for r in self.lrs), "final": self.lrs[-1][i]}
                              for i in range(len(self.lrs[0]))]
            f["optim.lr"] = reading.peak_lr
            f["sched.min_lr"] = reading.final_lr
            f["sched.decay"] = reading.decay
            f["sched.warmup_steps"] = reading.warmup_steps
            f["sched.total_steps"] = reading.steps
            f["sched.warmup_share"] = reading.warmup_share
            f["sched.lr_changes_every"] = reading.lr_changes_every
            if steps_per_epoch:
                f["sched.warmup_epochs"] = round(reading.warmup_steps / steps_per_epoch, 2)
        if self.forwards_per_step:
            f["optim.accum_steps"] = max(1, self.forwards_per_step.most_common(1)[0][0])
        if self.batch_sizes:
            f["data.batch_size"] = self.batch_sizes.most_common(1)[0][0]
        if self.img_sizes:
            f["data.img_size"] = self.img_sizes.most_common(1)[0][0]
        if self.num_classes:
            f["data.num_classes"] = self.num_classes
        clip = self.clipping()
        d["clipping"] = clip
        if clip["measured"]:
            f["optim.grad_clip"] = float(clip["max_norm"]) if clip["clipped"] else 0.0  # full precision: an fp16
            # clip before unscale_ acts at max_norm / scale (1e-5), which rounding would hide as 0
        if clip.get("scale_at_clip") is not None:
            f["precision.scale_at_clip"] = clip["scale_at_clip"]
        self._target_facts(f, d)
        rates = drop_path_rates(self.model)
        d["drop_path"] = rates
        f["model.drop_path"] = round(max((r for _, r in rates), default=0.0), 6)  # float32 attributes
        f["model.drop_path_rule"] = drop_path_rule([r for _, r in rates])
        d["dropout"] = [(n, m.p) for n, m in self.model.named_modules()
                        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        f["model.dropout"] = max((p for _, p in d["dropout"]), default=0.0)
        self._precision_facts(f, d, clip)
        self._ema_facts(f, d, steps=len(self.lrs))
        if self.evals:
            f["eval.train_mode"] = any(e["train_mode"] > 0 for e in self.evals)
            f["eval.train_mode_modules"] = train_mode_modules(self.model)
        return f, d

    def _target_facts(self, f: dict, d: dict) -> None:
        t = self.targets
        d["targets"] = dict(t)
        if t["hard"] + t["soft"] == 0:
            return
        if isinstance(self.criterion, nn.CrossEntropyLoss):  # the criterion, when given, is the loop's own word
            f["reg.label_smoothing"] = float(self.criterion.label_smoothing)
        elif self.smoothing:
            f["reg.label_smoothing"] = statistics.median(self.smoothing) + 0.0  # never -0.0
        f["aug.mixing"] = t["mixed"] > 0 or (t["hard"] > 0 and self.smoothing_unsolved > len(self.smoothing))
        if t["soft"] == 0 and f["aug.mixing"]:
            d["targets"]["note"] = "the loss is not the cross-entropy of the targets given to step(): mixing or a scaled loss"

    def _precision_facts(self, f: dict, d: dict, clip: dict) -> None:
        if self.amp:
            f["precision.amp"] = self.amp.most_common(1)[0][0]
        f["precision.compile"] = self.compiled
        if self.channels_last:
            f["precision.channels_last"] = "on" if self.channels_last.most_common(1)[0][0] else "off"
        scaler_on = (self.scaler is not None and self.scaler.is_enabled()) or clip.get("scale") is not None
        f["precision.scaler"] = scaler_on
        p = next(self.model.parameters(), None)
        d["param_dtype"] = str(p.dtype) if p is not None else None
        if p is not None and p.is_cuda:
            f["precision.tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)

    def _ema_facts(self, f: dict, d: dict, steps: int) -> None:
        if self.ema is None:
            f["reg.ema_decay"] = 0.0
            f["reg.eval_ema"] = False
            return
        decay, kind = ema_decay(self.ema)
        d["ema"] = {"kind": kind, "decay": decay}
        if decay is not None:
            f["reg.ema_decay"] = decay
            d["ema"]["horizon_steps"] = 1 / (1 - decay) if decay < 1 else math.inf
        n = getattr(self.ema, "n_averaged", None)
        if isinstance(n, torch.Tensor):
            d["ema"]["updates"] = int(n)
        if self.evals:
            f["reg.eval_ema"] = self.evals[-1]["ema"] > 0
