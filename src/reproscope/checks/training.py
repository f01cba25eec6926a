"""Checks that train: overfit one batch, input-independent baseline, determinism and resume, lr range.

Each drives a :class:`~reproscope.checks.core.Run` (the project's Trainer for a recipe, a textbook
AdamW step otherwise), so bugs in the step or the data stream show up here as they would in training.

A correct model that learns slowly at the recipe's lr is a WARN that says so and what to try, never a
FAIL (issue 34): a FAIL needs a measurement a correct but slow model cannot produce, and names it
(overfit-batch: the loss curve's slope, bounded outputs, a non-finite loss, a gradient leak;
input-independent: identical outputs for real and blank inputs, a shuffled-label control, the gradient
signal-to-noise of the training labels against the held-out labels). A check that cannot measure
says "not measured" (status skip). ``CheckData.quick`` gives each check its short budget.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..instrument.hooks import ActivationStats, parameter_norms
from ..plotting import legend_outside, pyplot, save_figure
from .core import Causes, CheckData, CheckResult, check, check_progress, fresh


def _device(model) -> torch.device:
    return next(model.parameters()).device


def reference_grad_norm(model, x, y) -> float:
    """The gradient norm of plain cross-entropy at the model's current weights, on a copy, drawing the
    same random numbers the next step will draw (the RNG is forked and restored): a dropout the model
    applies functionally (``F.dropout(x, p, self.training)``, timm's legacy SENet head), which no module
    walk can switch off, then uses the same mask in both, so only a real leak makes them differ."""
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        F.cross_entropy(m(x).float(), y).backward()
    gs = [p.grad for p in m.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs])).item()


OVERFIT_STEPS, OVERFIT_STEPS_QUICK = 150, 60
SLOPE_WINDOW = 1 / 3  # the part of the loss curve whose slope says "still falling" or "flat"
MIN_FALL = 0.05  # a fitted fall of >= 5 % of the loss over that window is "still falling"


def loss_slope(losses: list[float], window: float = SLOPE_WINDOW) -> tuple[float, int]:
    """(fraction by which a least-squares line through log(loss) over the last ``window`` of the curve
    falls across that window, the window's length in steps); 0.0 for a flat or rising curve, and for
    fewer than 6 points."""
    tail = [v for v in losses[-max(6, int(len(losses) * window)):] if math.isfinite(v) and v > 0]
    if len(tail) < 6:
        return 0.0, len(tail)
    t = torch.arange(len(tail), dtype=torch.float64)
    y = torch.tensor(tail, dtype=torch.float64).log()
    b = float(((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum())
    return max(0.0, 1.0 - math.exp(b * (len(tail) - 1))), len(tail)


def dead_outputs(logits: torch.Tensor) -> bool:
    """True when every output is exactly 0 ([N, K]): a ReLU or clamp after the classifier whose units all
    died in training (torchvision's SqueezeNet ends in conv -> ReLU -> pool; at a high lr its outputs go to 0)."""
    return logits.ndim == 2 and logits.numel() > 0 and bool((logits == 0).all())


def bounded_outputs(logits: torch.Tensor) -> str | None:
    """How the outputs are bounded when every output lies in [0, 1] ("probabilities: each row sums to 1"
    or "every output in [0, 1]"), else None. Logits of a model that fits its batch leave [0, 1]."""
    if logits.ndim != 2 or not bool(torch.isfinite(logits).all()) or logits.min() < 0 or logits.max() > 1:
        return None
    if bool(((logits.sum(1) - 1).abs() < 1e-3).all()):
        return "probabilities (every output in [0, 1], each row sums to 1: a softmax)"
    return "every output in [0, 1] (a sigmoid or a clamp)"


@check("overfit-batch")
def overfit_batch(make_model, data: CheckData, steps: int | None = None, batch: int = 16) -> CheckResult:
    """One fixed small batch through the training step, no augmentation/dropout/drop path/label smoothing.

    Measures the loss and accuracy on that batch after each step, in train mode (batch statistics, the
    mode the loss is measured in), for up to 150 steps (``OVERFIT_STEPS``; 60 in the quick tier),
    stopping once the loss is < 0.05 at 100 % accuracy. Passes at loss < 0.1 and 100 % accuracy.
    Eval-mode accuracy is measured too: when only it falls short (BatchNorm running statistics that lag
    a short run), a WARN (``eval-mode-differs``), never a FAIL. Steps 2 and 3 compare the gradient the
    step used with the gradient of that step's loss computed afresh: a difference of >= 5 % fails
    (``grad-leak``: gradients leak between steps).

    A model that has not memorised the batch fails only on a measurement a correct but slow model cannot
    produce: a non-finite loss; outputs bounded to [0, 1] (softmax/sigmoid before the loss: every output
    of the trained model in [0, 1], ``outputs-bounded``; a model that fits a batch needs margins beyond
    that); no gradient at all; a loss that spiked above 3x its start and stayed up; or the slope of the
    loss curve: over the last third of the steps a least-squares line through log(loss) falls by less than
    5 % (``MIN_FALL``) after the loss had fallen (a plateau above 0.1: ``plateau``). A loss still
    falling by >= 5 % over that window is a correct model learning slowly at this lr: a WARN
    (``slow-fit``) that says how far it got and what to try (a higher lr, more steps). So is a loss that
    never moved while gradients flow (``loss-flat``: lr too low for this model). Issue 34: a correct
    DyT ViT-Ti at 32 px, patch 4, reaches 88 % in 150 steps, still falling. Layer scale changes
    (``scale-exploded``, ``scale-collapsed``, ``grads-vanish``) are named only beside a FAIL, and a
    layer's growth is judged from the larger of its own init RMS and the median layer's: a layer that
    starts small on purpose (a 0.01-std classifier, a layer scale, a DyT branch) grows to the network's
    scale by design."""
    steps = steps or (OVERFIT_STEPS_QUICK if data.quick else OVERFIT_STEPS)
    model = fresh(make_model)
    run = data.run(model, clean=True)
    dev = _device(run.model)
    x, y = data.x[:batch].to(dev), data.y[:batch].to(dev)
    losses, leaks, grad_norms, report = [], [], [], None
    named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
    zero_grad_params: list[str] = []
    acts = ActivationStats(run.model, samples=batch, elements=8192)  # the instrument's own collector
    acts.enabled = True
    bar = check_progress(steps, f"overfit-batch: memorising {len(y)} images")
    for i in range(steps):
        ref = reference_grad_norm(run.model, x, y) if i in (1, 2) else None
        out = run.step(x, y, lr=data.lr)
        if ref is not None and math.isfinite(out.grad_norm) and ref > 0:
            leaks.append(abs(out.grad_norm - ref) / ref)
        if i == 0:
            _, g = parameter_norms(named)
            zero_grad_params = [n for (n, p), v in zip(named, g.tolist()) if v == 0 and p.grad is not None]
            first_stats, _ = acts.collect(), acts.clear()
            acts.enabled = False
        losses.append(out.loss)
        grad_norms.append(out.grad_norm)
        bar.update()
        bar.set_postfix(loss=f"{out.loss:.4f}")
        if not (math.isfinite(out.loss) and math.isfinite(out.grad_norm)):
            report = out.report
            break
        if i >= 19 and i % 10 == 9 and out.loss < 0.05 and _loss_acc(run.model, x, y, "train")[1] == 1.0:
            break  # memorised: the remaining steps would only cost time
    bar.close()
    acts.enabled = True
    logits = _train_logits(run.model, x)
    acc = float((logits.argmax(1) == y).float().mean()) if logits.ndim == 2 else 0.0
    last_stats = acts.collect()
    acts.remove()
    eval_acc = _loss_acc(run.model, x, y, "eval")[1]
    final = losses[-1]
    leak = max(leaks, default=0.0)
    fall, window = loss_slope(losses)
    bounded = bounded_outputs(logits)
    finite = [v for v in losses if math.isfinite(v)]
    spiked = bool(finite) and max(finite) > 3 * losses[0]
    ok = math.isfinite(final) and final < 0.1 and acc == 1.0 and leak < 0.05
    causes, warns = Causes(), Causes()
    lr_hint = f"try a higher lr (e.g. {3 * data.lr:.2g}; lr-range shows how high it can go) or more steps"
    if leak >= 0.05:
        causes.add("grad-leak", f"the gradient the optimizer stepped with differs by {leak:.0%} from the gradient of that "
                      f"step's loss: gradients leak between steps (zero_grad forgotten or misplaced) or are "
                      f"rescaled wrongly (accumulation)")
    if not math.isfinite(final):
        where = f" (tripwire: first non-finite in {report.module}, {report.phase})" if getattr(report, "module", None) else ""
        causes.add("loss-nonfinite", f"the loss became non-finite at step {len(losses)}{where}: lr too high ({data.lr:g}) "
                      f"or an unstable op")
    elif dead_outputs(logits) and not ok:
        warns.add("outputs-dead", f"every output of the trained model is exactly 0 after {len(losses)} steps (loss "
                  f"{final:.4f} = ln K): a ReLU or clamp after the classifier whose units all died at lr {data.lr:g} "
                  f"(torchvision's SqueezeNet ends in conv -> ReLU -> pool); a correct model can do this at a high "
                  f"lr: try a lower lr or warmup, or drop the final ReLU if the paper has none")
    elif bounded and not ok:
        causes.add("outputs-bounded", f"the trained model's outputs are {bounded} and the loss is stuck at {final:.2f} "
                   f"(accuracy {acc:.0%}): the outputs are bounded before the loss (softmax or sigmoid applied before "
                   f"cross-entropy); measured on the {len(y)} outputs after {len(losses)} steps")
    elif ok:
        pass
    elif final > 0.9 * losses[0] and spiked:
        causes.add("loss-spiked-stuck", f"the loss spiked to {max(finite):.3g} (from {losses[0]:.3g}) and never came down: lr too high "
                      f"({data.lr:g}) or an unstable update")
    elif fall >= MIN_FALL:
        warns.add("slow-fit", f"not memorised yet but still learning: loss {losses[0]:.3f} -> {final:.3f}, accuracy {acc:.0%} "
                  f"after {len(losses)} steps, and a line through log(loss) over the last {window} steps falls "
                  f"{fall:.0%} (>= {MIN_FALL:.0%}: the loss curve's slope): a correct model that learns slowly at lr "
                  f"{data.lr:g}; {lr_hint}")
    elif max(grad_norms, default=0.0) == 0.0:
        causes.add("no-gradient", f"the loss stayed at {final:.3f} and every step's gradient norm was exactly 0: no "
                   "gradient reaches the weights (a detach, a dead network, or a loss that does not depend on them)")
    elif final > 0.9 * losses[0]:
        warns.add("loss-flat", f"the loss stayed flat ({losses[0]:.3f} -> {final:.3f} in {len(losses)} steps) while gradients "
                  f"flow (norm up to {max(grad_norms):.3g}): lr {data.lr:g} too low for this model, or a slow start "
                  f"(outputs that start near 0); {lr_hint}")
    else:
        causes.add("plateau", f"the loss fell ({losses[0]:.3f} -> {final:.3f}) and then stopped: a line through log(loss) "
                   f"over the last {window} steps falls {fall:.1%} (< {MIN_FALL:.0%}: the loss curve's slope), at "
                   f"{acc:.0%} accuracy: a correct model keeps lowering the loss on {len(y)} examples; labels that "
                   f"contradict each other, outputs that cannot separate the examples (a model that ignores part of "
                   f"its input), or too much regularisation")
    status = "fail" if causes else "warn" if (warns or not ok) else "pass"
    if ok and eval_acc < 1.0 and not causes:  # the optimisation path works; eval mode disagrees (a finding, not a fault)
        status = "warn"
        warns.add("eval-mode-differs", f"train-mode loss {final:.4f} and accuracy {acc:.0%}, but eval-mode accuracy "
                  f"{eval_acc:.0%}: {eval_mode_difference(run.model)}; not an optimisation fault")
    if status == "fail":
        if zero_grad_params:
            causes.add("zero-grad-params", f"{len(zero_grad_params)} parameters got a zero gradient at step 1 (e.g. {zero_grad_params[0]})")
        if spiked and "loss-spiked-stuck" not in causes:
            causes.add("loss-spiked", f"the loss spiked above 3x its start (max {max(finite):.3g}): lr too high ({data.lr:g})")
        causes.extend(scale_changes(first_stats, last_stats))
    causes.extend(warns)
    return CheckResult(
        "overfit-batch", status,
        f"loss {losses[0]:.3f} -> {final:.4f}, accuracy {acc:.0%} (train mode; eval mode {eval_acc:.0%}) after "
        f"{len(losses)} steps; last-third slope -{fall:.0%}; step gradient vs fresh gradient {leak:.1%}",
        "loss < 0.1, 100% accuracy, step gradient = fresh gradient (< 5%); a slow fit (loss still falling) warns",
        f"A model that can learn anything must memorise {len(y)} examples; failing to means the "
        "optimisation path itself is broken. A loss still falling at the end is a slow model, not a broken one.",
        causes.sentences,
        {"losses": losses[:: max(1, len(losses) // 30)], "accuracy": acc, "eval_accuracy": eval_acc,
         "zero_grad_params": zero_grad_params, "grad_leak": leak, "slope_fall": fall, "bounded": bounded},
        causes.codes)


def scale_changes(first: dict, last: dict, factor: float = 100.0) -> Causes:
    """From the instrument's per-module stats at step 1 and at the end: the layer whose output scale
    exploded or collapsed most, and the layer with the smallest output-gradient RMS at step 1.

    Growth is judged from the larger of the layer's own RMS at step 1 and the median layer's: a layer
    that starts far below the network's scale on purpose (a classifier initialised at std 0.01, a layer
    scale of 1e-6, a DyT branch) grows to that scale by design, not by exploding. A vanishing gradient
    is judged on the layer's sensitivity, output RMS x output-gradient RMS (the loss change per relative
    change of the layer's output), so that a layer that is small at init does not look starved."""
    out = Causes()
    rms0 = {n: first[n]["rms"] for n in first if "rms" in first[n] and math.isfinite(first[n]["rms"])
            and first[n]["rms"] > 0}
    floor = sorted(rms0.values())[len(rms0) // 2] if rms0 else 0.0
    ratios = {n: last[n]["rms"] / max(r, floor) for n, r in rms0.items() if n in last and "rms" in last[n]}
    collapse = {n: last[n]["rms"] / r for n, r in rms0.items() if n in last and "rms" in last[n]}
    if ratios:
        up = max(ratios, key=lambda n: ratios[n] if math.isfinite(ratios[n]) else math.inf)
        if not math.isfinite(ratios[up]) or ratios[up] > factor:
            out.add("scale-exploded", f"the output scale of {up} exploded during training (RMS x{ratios[up]:.3g} of the "
                    f"larger of its own init RMS and the median layer's)")
    if collapse:
        down = min(collapse, key=collapse.get)
        if collapse[down] < 1 / factor:
            out.add("scale-collapsed", f"the output scale of {down} collapsed during training (RMS x{collapse[down]:.3g})")
    sens = {n: st["grad_rms"] * first[n]["rms"] for n, st in first.items()
            if "grad_rms" in st and "rms" in st and math.isfinite(st["grad_rms"]) and math.isfinite(st["rms"])}
    if sens:
        top, low = max(sens.values()), min(sens, key=sens.get)
        if top > 0 and sens[low] < top / 1e4:
            out.add("grads-vanish", f"gradients vanish at {low} at step 1 (output RMS x output-gradient RMS "
                    f"{sens[low]:.3g}, largest layer {top:.3g})")
    return out


def _eval_logits(model, x) -> torch.Tensor:
    """Logits in eval mode, without gradients; the model's train/eval mode is restored."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x).float()
    model.train(was)
    return logits


@contextlib.contextmanager
def frozen_norm_statistics(model: nn.Module):
    """Forward passes inside leave every BatchNorm's running statistics (and batch count) untouched:
    momentum 0 makes the running-average update a no-op."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _train_logits(model, x) -> torch.Tensor:
    """Logits in train mode (batch statistics, as the training loss sees them), without gradients and
    without moving BatchNorm running statistics; the model's mode is restored."""
    was = model.training
    model.train()
    with torch.no_grad(), frozen_norm_statistics(model):
        logits = model(x).float()
    model.train(was)
    return logits


def _per_example_loss(model, x, y, mode: str = "eval") -> torch.Tensor:
    """Cross-entropy of each example, [B] float32 (nats), in ``mode`` (see ``_loss_acc``)."""
    logits = _train_logits(model, x) if mode == "train" else _eval_logits(model, x)
    return F.cross_entropy(logits.float(), y, reduction="none")


def _loss_acc(model, x, y, mode: str = "eval") -> tuple[float, float]:
    """Cross-entropy and accuracy of ``model`` on (x, y) in ``mode`` ("train": batch statistics, as the
    training loss is measured; "eval": running statistics, as validation is)."""
    logits = _train_logits(model, x) if mode == "train" else _eval_logits(model, x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def _z_scores(model, vx, vy, real, zero) -> tuple[float, float, float]:
    """How many standard errors real inputs beat zeroed ones on held-out (vx, vy): by accuracy
    (two-proportion), by per-example loss (paired) and by the rank of the true class among the K
    logits (paired; 0 = top, ties split); ``real``/``zero`` are ``_loss_acc`` results.

    The accuracy baseline is the larger of the zeroed inputs' accuracy and the chance accuracy of the
    real predictions (sum over classes of predicted share x label share): blank inputs predict one
    class, whose share of the held-out labels can fall below chance, and a model guessing from noise
    would otherwise look better than blank inputs. The rank does not depend on the logits' scale: a
    model early in training that is over-confident on real images (a held-out loss above the blank
    inputs') can still rank the true class clearly higher (issue 34)."""
    logits_real = _train_logits(model, vx)
    logits_zero = _train_logits(model, torch.zeros_like(vx))
    k = logits_real.shape[1]
    pred_share = torch.bincount(logits_real.argmax(1), minlength=k).double() / len(vy)
    label_share = torch.bincount(vy, minlength=k).double() / len(vy)
    base = max(zero[1], float((pred_share * label_share).sum()))
    pooled = (real[1] + base) / 2
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * 2 / max(len(vy), 1))
    gain, gain_se = paired_gain(F.cross_entropy(logits_real, vy, reduction="none"),
                                F.cross_entropy(logits_zero, vy, reduction="none"))
    rank_gain, rank_se = paired_gain(true_class_rank(logits_real, vy), true_class_rank(logits_zero, vy))
    return (real[1] - base) / se, z_of(gain, gain_se), z_of(rank_gain, rank_se)


def true_class_rank(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N] float: how many classes score above the true one (ties count half), 0 = top; (K - 1) / 2 on
    average for logits that carry no information about the label."""
    true = logits.gather(1, y[:, None])
    return (logits > true).sum(1).double() + 0.5 * ((logits == true).sum(1).double() - 1)


def z_of(mean: float, se: float) -> float:
    """``mean / se``, where a standard error of exactly 0 (every paired difference identical, e.g. real and
    blank inputs giving identical losses) is the strongest evidence: +-inf by the sign of ``mean``, 0
    when ``mean`` is 0 too. Never raises."""
    if not math.isfinite(mean):
        return 0.0
    if se > 0 and math.isfinite(se):
        return mean / se
    if se == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return 0.0  # an infinite or NaN standard error: no evidence either way


def _leaning_real(model, vx, vy, real, zero) -> bool:
    """True when real inputs beat zeroed ones by at least 1 standard error on accuracy and loss."""
    return min(_z_scores(model, vx, vy, real, zero)[:2]) >= 1.0


def paired_gain(loss_a: torch.Tensor, loss_b: torch.Tensor) -> tuple[float, float]:
    """Mean per-example gain ``loss_b - loss_a`` (nats) and its standard error, for the same examples
    scored two ways ([N] each); a paired difference, so the spread between examples cancels."""
    d = (loss_b - loss_a).double()
    n = d.numel()
    se = d.std().item() / math.sqrt(n) if n > 1 else math.inf
    return d.mean().item(), se


def eval_mode_difference(model: nn.Module) -> str:
    """Why a model's eval-mode outputs can disagree with its train-mode ones, from its modules."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        moms = sorted({m.momentum for m in bns if m.momentum is not None})
        mom = f"momentum {', '.join(f'{v:g}' for v in moms)}" if moms else "cumulative average"
        return (f"BatchNorm running statistics lag the weights after a short run ({len(bns)} BatchNorm layers, "
                f"{mom}); they catch up over more steps, or recompute them on training batches before evaluating")
    return "the model computes something else in eval mode (a module whose eval path differs from its train path)"


INDEPENDENT_STEPS, INDEPENDENT_STEPS_QUICK = 300, 60
Z_CLEAR = 3.0  # standard errors: a one-sided false-alarm rate of about 0.1 % under the null


@check("input-independent")
def input_independent(make_model, data: CheckData, max_steps: int | None = None, every: int = 25) -> CheckResult:
    """Train on the training stream; on held-out data, real inputs must then beat zeroed inputs clearly.

    Zeroed (normalised) inputs are the mean image: whatever a model predicts for them it learned from
    the labels alone. Measures the held-out loss and accuracy with real and with zeroed inputs every
    ``every`` steps for up to ``max_steps`` (300, ``INDEPENDENT_STEPS``; 60 in the quick tier) and
    passes once real inputs lower the loss by 0.05 ln K and win in accuracy. Judged in train mode (batch
    statistics, as the training loss); when eval mode does not show the win yet (BatchNorm running
    statistics lagging), a WARN (``eval-mode-differs``). When ``max_steps`` end undecided but real inputs
    lead by at least 1 standard error on both scores, training goes on for another ``max_steps``.

    Without that win it fails only on a measurement a correct but slow model cannot produce, and says
    which it used:
    - the outputs for real and for blank inputs are identical after training (``ignores-input``,
      measured directly); equal per-example losses have a paired standard error of exactly 0, which is
      the strongest evidence, never an error;
    - held-out accuracy below the blank/chance baseline by more than 3 standard errors (two-proportion):
      the model learned something the held-out labels contradict (``labels-memorised``);
    - the outputs stayed ~0 (logit std < 0.01 at init, < 0.1 at the end) and the loss flat:
      ``outputs-near-zero``, a scale lost through depth (our DyT ConvNeXt-T finding);
    - the shuffled-label control: two fresh runs from the same init on the first 3 training batches,
      with their labels and with them permuted; bit-identical losses mean the labels never reach the
      loss (label smoothing 1, constant targets: ``targets-uninformative``);
    - the gradient signal-to-noise control (``label_signal``): for a fresh model, the part of each batch's
      gradient that the labels' pairing with the images makes (gradient with the labels minus gradient
      with them shuffled) points the same way from batch to batch when the labels carry information
      about the images, and the score (z against shuffled-label pairs) grows with the number of images.
      Measured on up to 1024 training images with their labels and on the held-out images with theirs:
      held-out labels above ``HELD_SIGNAL`` (2.5) while the training labels, on at least twice as many
      images, score lower means the training labels lack the structure the held-out labels have
      (``targets-uninformative``: labels shuffled or misaligned). It does not depend on how fast the
      model learns. Measured on the zoo's shapes10 at 32 px, ViT-quick: held-out 3.0 (300 images),
      training 10.8 (1024) with correct labels, 0.9 with shuffled ones.
    A model that uses its inputs but has not met the margin - real inputs better on the held-out images
    by more than 3 standard errors in accuracy, paired per-example loss or the paired rank of the true
    class among the K logits (scale-free: issue 34's correct slow learner ended at held-out loss real
    2.353 vs zeroed 2.302 after 300 steps and used to FAIL) - is a WARN (``slow-start``), and so is one
    whose training labels steer its gradient (> 3 standard errors, ``slow-learner``); each says what to
    try. When neither the training nor the held-out labels show in its gradient at init and it learned
    nothing, the check cannot tell a slow learner from a data fault: not measured (status skip,
    ``not-learned``). The 3-standard-error bar (``Z_CLEAR``) is ours: a one-sided false-alarm rate of
    about 0.1 % under the null of no gain.
    """
    max_steps = max_steps or (INDEPENDENT_STEPS_QUICK if data.quick else INDEPENDENT_STEPS)
    every = min(every, max(1, max_steps // 3))
    model = fresh(make_model)
    run = data.run(model, clean=False)
    dev = _device(run.model)
    vx, vy = (t.to(dev) for t in data.held_out())
    margin = 0.05 * math.log(data.num_classes)
    std0 = _eval_logits(run.model, vx).std().item()
    losses, real, zero = [], (math.inf, 0.0), (math.inf, 0.0)
    limit, i = max_steps, 0
    bar = check_progress(2 * max_steps, "input-independent: training, then real vs blank held-out images")
    while i < limit:
        losses.append(run.step().loss)
        i += 1
        bar.update()
        if not math.isfinite(losses[-1]):
            break
        if i % every == 0 or i == limit:
            real = _loss_acc(run.model, vx, vy, "train")
            zero = _loss_acc(run.model, torch.zeros_like(vx), vy, "train")
            bar.set_postfix(real=f"{real[0]:.3f}", blank=f"{zero[0]:.3f}")
            if real[0] <= zero[0] - margin and real[1] > zero[1]:
                break
            if i == limit == max_steps and _leaning_real(run.model, vx, vy, real, zero):
                limit = 2 * max_steps  # inconclusive but leaning to the real inputs: one more budget
    bar.close()
    ok = real[0] <= zero[0] - margin and real[1] > zero[1]
    n = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    causes, warns = Causes(), Causes()
    status = "pass" if ok else "fail"
    real_eval = _loss_acc(run.model, vx, vy, "eval")
    zero_eval = _loss_acc(run.model, torch.zeros_like(vx), vy, "eval")
    controls: dict = {}
    if ok and not (real_eval[0] <= zero_eval[0] - margin and real_eval[1] > zero_eval[1]):
        status = "warn"  # the model learned from its inputs (train mode); eval mode does not show it yet
        warns.add("eval-mode-differs", f"in train mode real inputs win (held-out loss {real[0]:.3f} vs {zero[0]:.3f}), "
                  f"in eval mode they do not ({real_eval[0]:.3f} vs {zero_eval[0]:.3f}, accuracy {real_eval[1]:.0%}): "
                  f"{eval_mode_difference(run.model)}; not a data fault")
    z_acc = z_loss = z_rank = 0.0
    hint = f"try a higher lr (e.g. {3 * data.lr:.2g}; see lr-range) or more steps"
    if not ok and not math.isfinite(losses[-1]):
        causes.add("loss-nonfinite", "the training loss became non-finite: see overfit-batch and lr-range")
    elif not ok:
        z_acc, z_loss, z_rank = _z_scores(run.model, vx, vy, real, zero)
        dep = (_train_logits(run.model, vx) - _train_logits(run.model, torch.zeros_like(vx))).abs().max().item()
        controls.update(output_difference=dep, z_rank=z_rank)
        if dep == 0 and dead_outputs(_train_logits(run.model, vx)):
            warns.add("outputs-dead", f"after {len(losses)} steps every output is exactly 0 for real and for blank "
                      f"images: a ReLU or clamp after the classifier whose units all died in training (torchvision's "
                      f"SqueezeNet at a high lr), not a model that ignores its input by construction; try a lower "
                      f"lr or warmup (overfit-batch says the same)")
        elif dep == 0:
            causes.add("ignores-input", f"after {len(losses)} steps the outputs for the {len(vy)} held-out images and for "
                       f"blank images are identical (max difference 0; measured directly): the model's output does "
                       f"not depend on its input (the input is dropped, detached into a constant, or overwritten "
                       f"before the layers that decide)")
        elif max(z_acc, z_loss, z_rank) > Z_CLEAR:
            evidence = (f"accuracy {real[1]:.0%} vs {zero[1]:.0%}, {z_acc:.1f} standard errors" if z_acc > Z_CLEAR else
                        f"per-example loss lower, {z_loss:.1f} standard errors of the paired difference"
                        if z_loss > Z_CLEAR else
                        f"the true class ranked higher among the {data.num_classes} logits, {z_rank:.1f} standard "
                        f"errors of the paired difference")
            warns.add("slow-start", f"on {len(vy)} held-out images real inputs beat blank inputs ({evidence}), but the loss "
                      f"margin is not met after {len(losses)} steps: the model uses its inputs and learns slowly here "
                      f"(e.g. images small for its architecture, or a large initial loss to unlearn); not a data "
                      f"fault; {hint}")
        elif z_acc < -Z_CLEAR:
            causes.add("labels-memorised", f"the training loss fell ({first:.3f} -> {last:.3f}) but on held-out images real "
                       f"inputs are less accurate than blank ones or chance ({real[1]:.0%} vs {zero[1]:.0%}, {z_acc:.1f} "
                       f"standard errors): labels that do not match the images (shuffled or misaligned) were "
                       f"memorised, or train and validation label the classes in different orders")
        elif (last > 0.95 * first and std0 < 1e-2
              and (std_end := _eval_logits(run.model, vx).std().item()) < 0.1):
            causes.add("outputs-near-zero", f"the training loss did not fall ({first:.3f} -> {last:.3f}) and the outputs hardly "
                          f"left zero (logit std {std0:.2g} at init, {std_end:.2g} after {len(losses)} steps): a "
                          "slow start that hides any data bug, if the lr is sane (see lr-range) - activations "
                          "shrink through depth at init (e.g. DyT or no normalisation where LayerNorm used to "
                          "rescale each stage), so the net is nearly linear and Adam needs many steps to grow the scales. Train longer, "
                          "or raise the init scale (DyT alpha0, layer scale, head init); init-scale and "
                          "loss-at-init show the scales")
        elif _labels_never_reach_loss(make_model, data, controls):
            causes.add("targets-uninformative", f"the first {LABEL_STEPS} training losses with the given labels and with "
                       f"the same batch's labels shuffled are identical (shuffled-label control: same init, same "
                       f"images): the labels never reach the loss (label smoothing near 1, all targets equal, "
                       f"targets overwritten)")
        else:
            z_train, z_held = label_signal(make_model, data, vx, vy, controls)
            if z_train > Z_CLEAR:
                warns.add("slow-learner", f"the given training labels steer the gradient: batch gradients with them "
                          f"agree {z_train:.1f} standard errors more than with the labels shuffled (gradient "
                          f"signal-to-noise control), so the labels carry information and the model can see it; "
                          f"the held-out margin is not met after {len(losses)} steps (real {real[0]:.3f} vs blank "
                          f"{zero[0]:.3f}): a correct model that learns slowly here; {hint}")
            elif (z_held > HELD_SIGNAL and z_train < z_held
                  and controls["grad_images"][0] >= 2 * controls["grad_images"][1]):
                n_tr, n_held = controls["grad_images"]
                causes.add("targets-uninformative", f"batch gradients with the held-out images' own labels agree "
                           f"{z_held:.1f} standard errors more than with those labels shuffled ({n_held} images), with "
                           f"the training labels only {z_train:.1f} on {n_tr} images (gradient signal-to-noise "
                           f"control, same model at init; with informative labels the score grows with the number "
                           f"of images): the model sees image-label structure in the held-out data and not in the "
                           f"training data, and after {len(losses)} steps real inputs do not beat blank ones on "
                           f"held-out images: the training labels carry no information about the images (labels "
                           f"shuffled or misaligned with the images)")
            else:
                warns.add("not-learned", f"the model learned nothing measurable in {len(losses)} steps (on held-out images "
                          f"real inputs do not beat blank ones: accuracy {z_acc:.1f}, loss {z_loss:.1f}, true-class rank "
                          f"{z_rank:.1f} standard errors) and its gradients at init see too little label structure to "
                          f"judge the labels (gradient signal-to-noise control: training labels {z_train:.1f}, held-out "
                          f"labels {z_held:.1f}): a slow learner and a data fault look alike here; {hint}")
        status = "fail" if causes else ("skip" if warns.codes == ["not-learned"] else "warn")
    causes.extend(warns)
    measured = (f"held-out loss real {real[0]:.3f} vs zeroed {zero[0]:.3f}, accuracy {real[1]:.0%} vs {zero[1]:.0%} "
                f"(train mode) after {len(losses)} steps")
    return CheckResult(
        "input-independent", status, f"not measured: {measured}" if status == "skip" else measured,
        f"real inputs lower the loss by >= {margin:.3f} (0.05 ln K) and win in accuracy",
        "After some training, a model that uses its input must do clearly better on held-out data than the "
        "same model fed blank (mean) images, which can only predict the label prior.", causes.sentences,
        {"steps": len(losses), "real": real, "zeroed": zero, "real_eval": real_eval, "zeroed_eval": zero_eval,
         "z_scores": None if ok else (z_acc, z_loss, z_rank), "controls": controls,
         "train_losses": losses[:: max(1, len(losses) // 30)]}, causes.codes)


LABEL_STEPS = 3  # steps of the shuffled-label control


def _labels_never_reach_loss(make_model, data: CheckData, controls: dict) -> bool:
    """The shuffled-label control: two fresh runs (same init) on the first ``LABEL_STEPS`` training batches,
    one with the batches' labels, one with them permuted; True when every loss is bit-identical (the labels
    do not enter the loss), or when permuting cannot change the labels (all equal)."""
    run_a, run_b = data.run(fresh(make_model), clean=False), data.run(fresh(make_model), clean=False)
    same = True
    for i in range(LABEL_STEPS):
        x, y = data.train_stream(i)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(7 + i)).to(y.device)
        la, lb = run_a.step(x, y).loss, run_b.step(x, y[perm]).loss
        same &= la == lb
    controls["labels_reach_loss"] = not same
    return same


GRAD_TRAIN_IMAGES, GRAD_BATCH, GRAD_NULLS, GRAD_COORDS = 1024, 32, 8, 1 << 18
HELD_SIGNAL = 2.5  # the held-out labels' z above which the model's gradient sees label structure


def label_signal(make_model, data: CheckData, vx, vy, controls: dict | None = None) -> tuple[float, float]:
    """The gradient signal-to-noise control: how much the training labels (up to ``GRAD_TRAIN_IMAGES``
    training images) and the held-out images' own labels steer a fresh model's gradient beyond what
    shuffled labels do (z-scores, ``gradient_coherence``, batches of ``GRAD_BATCH``; 0.0 with fewer
    than 8 batches)."""
    if data.source is None:  # plain tensors: the training part itself
        n = len(data.x) // 2 if data.val_x is None else len(data.x)
        tx, ty = data.x[:min(n, GRAD_TRAIN_IMAGES)], data.y[:min(n, GRAD_TRAIN_IMAGES)]
    else:  # a recipe's pipeline: its augmented training batches
        xs, ys, i = [], [], 0
        while sum(len(t) for t in ys) < GRAD_TRAIN_IMAGES and i < GRAD_TRAIN_IMAGES // 8:
            x, y = data.train_stream(i)
            if y.ndim != 1:  # soft targets (mixing): no labels to shuffle
                break
            xs.append(x)
            ys.append(y)
            i += 1
        tx, ty = (torch.cat(xs)[:GRAD_TRAIN_IMAGES], torch.cat(ys)[:GRAD_TRAIN_IMAGES]) if xs else (vx[:0], vy[:0])
    dev = vx.device
    held_batch = max(8, min(GRAD_BATCH, len(vy) // 8))
    z_train = gradient_coherence(make_model, tx.to(dev), ty.to(dev), GRAD_BATCH) if len(ty) >= 8 * GRAD_BATCH else 0.0
    z_held = gradient_coherence(make_model, vx, vy, held_batch) if len(vy) >= 8 * held_batch else 0.0
    if controls is not None:
        controls.update(grad_signal_train=z_train, grad_signal_heldout=z_held, grad_images=(len(ty), len(vy)))
    return z_train, z_held


def gradient_coherence(make_model, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """z-score of label-driven gradient agreement on (x, y), cut into batches of ``batch``.

    For each batch, the gradient of a fresh model (train mode, norm statistics untouched) with the given
    labels minus its gradient with the batch's labels permuted is the part of the gradient the labels'
    pairing with the images makes; with labels that carry information about the images these parts point
    the same way from batch to batch (mean pairwise cosine > 0), with shuffled or random labels they do
    not. The null distribution is the same statistic between two shuffled label sets (``GRAD_NULLS``
    draws); the result is (given - null mean) / null std. Gradients are subsampled to ``GRAD_COORDS``
    coordinates (a fixed stride). 0.0 when a gradient is non-finite."""
    model = fresh(make_model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y) - batch + 1, batch)]

    def grads(seed: int | None) -> torch.Tensor | None:
        rows = []
        for j, (xb, yb) in enumerate(batches):
            if seed is not None:
                yb = yb[torch.randperm(len(yb), generator=torch.Generator().manual_seed(1000 * seed + j)).to(yb.device)]
            model.zero_grad(set_to_none=True)
            with frozen_norm_statistics(model):
                F.cross_entropy(model(xb).float(), yb).backward()
            g = torch.cat([p.grad.flatten().float() for p in params if p.grad is not None])
            if not bool(torch.isfinite(g).all()):
                return None
            rows.append(g[:: max(1, g.numel() // GRAD_COORDS)])
        return torch.stack(rows)

    def coherence(d: torch.Tensor) -> float:
        u = F.normalize(d, dim=1)
        c = u @ u.T
        k = len(d)
        return float((c.sum() - c.diagonal().sum()) / (k * (k - 1)))

    given, shuffled = grads(None), [grads(s) for s in range(1, GRAD_NULLS + 1)]
    model.zero_grad(set_to_none=True)
    if given is None or any(g is None for g in shuffled) or len(batches) < 3:
        return 0.0
    stat = statistics.mean(coherence(given - shuffled[j]) for j in range(3))
    nulls = [coherence(shuffled[i] - shuffled[j]) for i in range(GRAD_NULLS) for j in range(i + 1, GRAD_NULLS)]
    return z_of(stat - statistics.mean(nulls), statistics.stdev(nulls))


@check("determinism")
def determinism(make_model, data: CheckData, k: int | None = None, resume_at: int | None = None) -> CheckResult:
    """Same seed, same losses for k steps; a resume at step s matches the uninterrupted run; eval is deterministic.

    Measures the training losses of two runs from the same seed for ``k`` (6) steps, of a run resumed
    from the first one's state at step ``resume_at`` (3) into a model built from another seed, and two
    eval-mode forward passes of 8 images. On CPU every difference must be exactly 0 (CPU kernels are
    deterministic: every model of the correct-model panel, checks.panel, gives 0); on a GPU within 1e-4 relative (its
    kernels may not be). Always measured (18 steps; the quick tier: k 4, resume at 2, 12 steps)."""

    k = k or (4 if data.quick else 6)
    resume_at = resume_at or k // 2

    def losses_of(run, n):
        return [run.step().loss for _ in range(n)]

    run_a = data.run(fresh(make_model, dropout=True))
    la = losses_of(run_a, resume_at)
    state = run_a.state_dict()
    la += losses_of(run_a, k - resume_at)
    lb = losses_of(data.run(fresh(make_model, dropout=True)), k)
    run_c = data.run(fresh(make_model, seed=12345, dropout=True))  # other weights: the state must restore them
    run_c.load_state_dict(state)
    lc = la[:resume_at] + losses_of(run_c, k - resume_at)
    model = run_a.model.eval()
    dev = _device(model)
    x = data.x[:8].to(dev)
    with torch.no_grad():
        e1, e2 = model(x).float(), model(x).float()
    eval_diff = (e1 - e2).abs().max().item()
    exact = dev.type == "cpu"
    tol = 0.0 if exact else 1e-4

    def diff(a, b):
        return max(abs(u - v) / max(abs(u), 1e-12) for u, v in zip(a, b))

    d_seed, d_resume = diff(la, lb), diff(la, lc)
    causes = Causes()
    if d_seed > tol:
        causes.add("seed-nondeterministic", f"two runs with the same seed differ (first at step {_first(la, lb)}, rel. {d_seed:.2g}): an "
                      "unseeded random source (data order, augmentation, dropout) or a nondeterministic kernel")
    if d_resume > tol:
        causes.add("resume-differs", f"resuming at step {resume_at} does not reproduce the uninterrupted run (first difference at "
                      f"step {_first(la, lc)}): state missing from the checkpoint (optimizer, schedule, RNG, data "
                      "position)")
    if eval_diff > (0 if exact else 1e-5 * max(e1.abs().max().item(), 1.0)):
        causes.add("eval-random", f"the same input gives different outputs in eval mode (max diff {eval_diff:.3g}): dropout or "
                      "another random op still active at evaluation (e.g. F.dropout without training=self.training)")
    return CheckResult(
        "determinism", "fail" if causes else "pass",
        f"same seed: max rel. diff {d_seed:.2g}; resume at {resume_at}: {d_resume:.2g}; eval twice: {eval_diff:.2g}",
        "identical losses for k steps (CPU), identical after resume, identical eval outputs" if exact
        else f"losses within {tol:g} (GPU kernels may be nondeterministic)",
        "Two runs with one seed must agree step for step, a resumed run must continue exactly where it stopped, "
        "and evaluation must be a function of the input alone.", causes.sentences,
        {"losses": la, "same_seed": lb, "resumed": lc, "eval_diff": eval_diff}, causes.codes)


def _first(a, b) -> int:
    return next((i + 1 for i, (u, v) in enumerate(zip(a, b)) if u != v), 0)


LR_STEPS, LR_STEPS_QUICK = 100, 40


@check("lr-range")
def lr_range(make_model, data: CheckData, steps: int | None = None, lo: float | None = None,
             hi: float = 10.0) -> CheckResult:
    """Exponential lr sweep on the training stream (Smith 2017), plotted to lr_range.png.

    Measures the training loss at each of ``steps`` lrs from ``lo`` to ``hi`` (100 steps from 1e-7 to
    10; the quick tier 40 from 1e-6), smoothed by an exponential average (0.9). Three points come out
    of it, each only when the curve supports it:
    - the divergence lr, where the smoothed loss first climbs to 1.5x its lowest value so far (or turns
      non-finite): robust, the loss jumps there;
    - the fall lr, where the smoothed loss first drops below its start by more than its noise (the
      larger of 3 % of the start and 3 standard deviations of the smoothed loss, estimated from the
      first 10 steps, where the lr is too small to move anything);
    - the loss-minimum lr: noisy (a 100-step sweep over 8 decades spends ~25 steps where a model
      learns, so it moves by 10x between seeds and models; measured on the built-in recipes).
    The suggested lr is the loss minimum / 10 (the usual rule) but never below the fall lr, and none is
    suggested when the loss never fell. The configured lr fails within 3x of the divergence lr (once
    warmup ends, training will diverge) or 6 decades below it (an lr of ~0; the sweep's top lr stands
    in when it never diverged). It warns past the minimum only where the curve itself has turned up:
    the configured lr beyond 3x the loss minimum and the smoothed loss there above the minimum by more
    than a quarter of the fall (never from the minimum alone: issue 34, the minimum at the sweep's first
    point made it warn on most correct models). A curve that neither fell nor diverged is not measured
    (status skip): "the loss did not move over the sweep"."""
    steps = steps or (LR_STEPS_QUICK if data.quick else LR_STEPS)
    lo = lo or (1e-6 if data.quick else 1e-7)
    model = fresh(make_model)
    run = data.run(model, clean=False)
    lrs = [lo * (hi / lo) ** (i / (steps - 1)) for i in range(steps)]
    raw, smooth, avg = [], [], 0.0
    diverge = math.inf
    bar = check_progress(steps, f"lr-range: sweeping lr {lo:g} -> {hi:g}")
    for i, lr in enumerate(lrs):
        loss = run.step(lr=lr).loss
        bar.update()
        bar.set_postfix(lr=f"{lr:.2g}", loss=f"{loss:.3f}")
        if not math.isfinite(loss):
            diverge = min(diverge, lr)
            break
        raw.append(loss)
        avg = 0.9 * avg + 0.1 * loss
        smooth.append(avg / (1 - 0.9 ** (i + 1)))
        if i > 10 and smooth[-1] > 1.5 * min(smooth):
            diverge = min(diverge, lr)
        if i > 10 and smooth[-1] > 4 * min(smooth):
            break
    bar.close()
    if not smooth:  # non-finite at the very first lr: nothing to sweep
        return CheckResult("lr-range", "fail", f"the loss is non-finite already at lr {lo:g}", "a finite loss to sweep",
                           "An lr sweep needs a finite loss at its smallest lr.",
                           [f"the loss is non-finite at the sweep's smallest lr ({lo:g}): the model or its data "
                            "produce NaN/inf regardless of the lr (see grad-flow and the tripwire)"],
                           {"lrs": lrs[:1], "loss": []}, ["loss-nonfinite"])
    best = min(range(len(smooth)), key=smooth.__getitem__)
    lr_min = lrs[best]
    head = raw[:10]
    noise = statistics.pstdev(head) * math.sqrt(0.1 / 1.9) if len(head) > 1 else 0.0  # of the smoothed loss
    delta = max(0.03 * smooth[0], 3 * noise)
    fall_i = next((i for i, v in enumerate(smooth[: best + 1]) if v < smooth[0] - delta), None)
    lr_fall = lrs[fall_i] if fall_i is not None else None
    fall = smooth[0] - smooth[best]
    suggest = max(lr_min / 10, lr_fall) if lr_fall is not None else None
    causes, warns = Causes(), Causes()
    if data.lr >= diverge / 3:
        causes.add("lr-too-high", f"the configured lr {data.lr:g} is {data.lr / diverge:.3g}x the lr where the sweep's loss "
                      f"diverged ({diverge:.2g}): lr too high, training will diverge or stall")
    elif lr_fall is not None and data.lr > 3 * lr_min:
        at = min(range(len(smooth)), key=lambda i: abs(math.log(lrs[i] / data.lr)))
        if data.lr <= lrs[len(smooth) - 1] and smooth[at] - smooth[best] > 0.25 * fall:
            warns.add("lr-past-minimum", f"the configured lr {data.lr:g} is {data.lr / lr_min:.3g}x past the sweep's loss "
                      f"minimum ({lr_min:.2g}) and the curve has turned up there (smoothed loss {smooth[at]:.3f} vs "
                      f"minimum {smooth[best]:.3f}, > 1/4 of the fall {fall:.3f}; it diverged at {diverge:.2g}): consider "
                      f"a lower lr")
    ceiling = min(diverge, hi)  # a sweep that never diverged is judged against its top lr
    floor = ceiling * 1e-6
    moved = lr_fall is not None or math.isfinite(diverge)
    if data.lr < floor and moved:
        causes.add("lr-too-low", f"the configured lr {data.lr:g} is {ceiling / data.lr:.3g}x below the lr where the "
                      f"sweep diverged ({ceiling:.2g}): lr too low, training will barely move")
    fig = _plot_lr_range(data, lrs[:len(smooth)], raw, smooth, suggest, lr_min, diverge)
    status = "fail" if causes else "warn" if warns else "pass" if moved else "skip"
    sugg = (f"falls from lr {lr_fall:.2g}, minimum at lr {lr_min:.2g} (suggested {suggest:.2g})" if lr_fall is not None
            else "did not fall (no lr suggested)")
    measured = f"diverges at lr {diverge:.2g}, loss {sugg}, configured {data.lr:g}"
    if status == "skip":
        measured = (f"not measured: the loss did not move over the sweep (smoothed loss within {delta:.3f} of its start "
                    f"{smooth[0]:.3f} from lr {lo:g} to {lrs[len(smooth) - 1]:.2g}, never diverged)")
        warns.add("flat-sweep", "the loss did not move over the sweep: nothing to suggest or judge (a model that learns "
                  "nothing in this many steps at any lr; see overfit-batch)")
    return CheckResult(
        "lr-range", status, measured,
        f"configured lr in [divergence / 1e6, divergence / 3] = [{floor:.2g}, {diverge / 3:.2g}] (warns where the "
        f"curve has turned up past 3x the loss minimum)",
        "An exponential lr sweep shows where training is too slow (flat loss), where it works (falling loss) and "
        "where it diverges. A configured lr near the divergence point, or decades below it, is a mistake.",
        causes.sentences + warns.sentences,
        {"lrs": lrs[:len(smooth)], "loss": raw, "smoothed": smooth, "suggested_lr": suggest, "min_loss_lr": lr_min,
         "fall_lr": lr_fall, "diverge_lr": diverge, "noise": noise, "figure": str(fig) if fig else None},
        causes.codes + warns.codes)


def _plot_lr_range(data: CheckData, lrs, raw, smooth, suggest, lr_min, diverge):
    if data.out_dir is None or not smooth:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot(lrs, raw, color="0.75", lw=0.8, label="loss")
    ax.plot(lrs, smooth, color="C0", label="smoothed")
    if suggest is not None:
        ax.axvline(suggest, color="C2", ls="--", label=f"suggested {suggest:.2g}")
    ax.axvline(lr_min, color="C3", ls=":", label=f"loss minimum {lr_min:.2g}")
    if math.isfinite(diverge):
        ax.axvline(diverge, color="C1", ls="-", lw=0.8, label=f"diverges {diverge:.2g}")
    ax.axvline(data.lr, color="k", ls="-.", label=f"configured {data.lr:.2g}")
    ax.set_xscale("log")
    ax.set_ylim(0, min(max(raw), 3 * smooth[0]) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("lr range test")
    legend_outside(ax)
    return save_figure(fig, data.out_dir / "lr_range.png")
