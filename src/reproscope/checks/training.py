"""Checks that train: overfit one batch, input-independent baseline, determinism and resume, lr range.

Each drives a :class:`~reproscope.checks.core.Run` (the project's Trainer for a recipe, a textbook
AdamW step otherwise), so bugs in the step or the data stream show up here as they would in training.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..instrument.hooks import ActivationStats, parameter_norms
from ..plotting import legend_outside, pyplot, save_figure
from .core import Causes, CheckData, CheckResult, check, fresh


def _device(model) -> torch.device:
    return next(model.parameters()).device


def reference_grad_norm(model, x, y) -> float:
    """The gradient norm of plain cross-entropy at the model's current weights, on a copy."""
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    F.cross_entropy(m(x).float(), y).backward()
    gs = [p.grad for p in m.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs])).item()


@check("overfit-batch")
def overfit_batch(make_model, data: CheckData, steps: int = 150, batch: int = 16) -> CheckResult:
    """One fixed small batch through the training step, no augmentation/dropout/drop path/label smoothing:
    loss -> ~0 and 100% accuracy, both in train mode (batch statistics), the mode the loss is measured
    in; stops early once the loss is < 0.05 and that accuracy 100%. Eval-mode accuracy is measured too:
    when only it falls short (BatchNorm running statistics that lag a short run), the result is a WARN
    with that cause (code ``eval-mode-differs``), never a FAIL. Steps 2 and 3 also compare the gradient
    the step used with the gradient of that step's loss computed afresh: a difference means gradients
    leak between steps."""
    model = fresh(make_model)
    run = data.run(model, clean=True)
    dev = _device(run.model)
    x, y = data.x[:batch].to(dev), data.y[:batch].to(dev)
    losses, leaks, report = [], [], None
    named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
    zero_grad_params: list[str] = []
    acts = ActivationStats(run.model, samples=batch, elements=8192)  # the instrument's own collector
    acts.enabled = True
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
        if not (math.isfinite(out.loss) and math.isfinite(out.grad_norm)):
            report = out.report
            break
        if i >= 19 and i % 10 == 9 and out.loss < 0.05 and _loss_acc(run.model, x, y, "train")[1] == 1.0:
            break  # memorised: the remaining steps would only cost time
    acts.enabled = True
    acc = _loss_acc(run.model, x, y, "train")[1]  # the mode the loss was measured in
    last_stats = acts.collect()
    acts.remove()
    eval_acc = _loss_acc(run.model, x, y, "eval")[1]
    final = losses[-1]
    leak = max(leaks, default=0.0)
    ok = math.isfinite(final) and final < 0.1 and acc == 1.0 and leak < 0.05
    status = "pass" if ok else "warn" if (math.isfinite(final) and final <= 0.5 and acc >= 0.9 and leak < 0.05) else "fail"
    causes = Causes()
    if ok and eval_acc < 1.0:  # the optimisation path works; eval mode disagrees (a finding, not a fault)
        status = "warn"
        causes.add("eval-mode-differs", f"train-mode loss {final:.4f} and accuracy {acc:.0%}, but eval-mode accuracy "
                   f"{eval_acc:.0%}: {eval_mode_difference(run.model)}; not an optimisation fault")
    finite = [v for v in losses if math.isfinite(v)]
    spiked = bool(finite) and max(finite) > 3 * losses[0]
    if leak >= 0.05:
        causes.add("grad-leak", f"the gradient the optimizer stepped with differs by {leak:.0%} from the gradient of that "
                      f"step's loss: gradients leak between steps (zero_grad forgotten or misplaced) or are "
                      f"rescaled wrongly (accumulation)")
    if not math.isfinite(final):
        where = f" (tripwire: first non-finite in {report.module}, {report.phase})" if getattr(report, "module", None) else ""
        causes.add("loss-nonfinite", f"the loss became non-finite at step {len(losses)}{where}: lr too high ({data.lr:g}) "
                      f"or an unstable op")
    elif losses[-1] > 0.9 * losses[0] and spiked:
        causes.add("loss-spiked-stuck", f"the loss spiked to {max(finite):.3g} (from {losses[0]:.3g}) and never came down: lr too high "
                      f"({data.lr:g}) or an unstable update")
    elif losses[-1] > 0.9 * losses[0]:
        causes.add("loss-flat", f"the loss stayed flat: lr too low ({data.lr:g}), gradients not reaching the weights, or "
                      "the output squashed before the loss (e.g. softmax before cross-entropy)")
    elif final >= 0.1 and acc == 1.0:
        causes.add("outputs-bounded", f"every example is classified right but the loss is stuck at {final:.2f}: the outputs are "
                      "bounded before the loss (softmax or sigmoid applied before cross-entropy) or the "
                      "targets are smoothed")
    elif final >= 0.1:
        causes.add("underfit", "the loss fell but not to ~0: too few steps for this lr, too much regularisation, "
                      "or labels that contradict each other")
    if zero_grad_params:
        causes.add("zero-grad-params", f"{len(zero_grad_params)} parameters got a zero gradient at step 1 (e.g. {zero_grad_params[0]})")
    if spiked and "loss-spiked-stuck" not in causes:
        causes.add("loss-spiked", f"the loss spiked above 3x its start (max {max(finite):.3g}): lr too high ({data.lr:g})")
    if status != "pass" and "eval-mode-differs" not in causes:  # (a memorised batch's logits grow by design)
        causes.extend(scale_changes(first_stats, last_stats))
    return CheckResult(
        "overfit-batch", status,
        f"loss {losses[0]:.3f} -> {final:.4f}, accuracy {acc:.0%} (train mode; eval mode {eval_acc:.0%}) after "
        f"{len(losses)} steps; step gradient vs fresh gradient {leak:.1%}",
        "loss < 0.1, 100% accuracy, step gradient = fresh gradient (< 5%)",
        f"A model that can learn anything must memorise {len(y)} examples; failing to means the "
        "optimisation path itself is broken.", causes.sentences,
        {"losses": losses[:: max(1, len(losses) // 30)], "accuracy": acc, "eval_accuracy": eval_acc,
         "zero_grad_params": zero_grad_params, "grad_leak": leak}, causes.codes)


def scale_changes(first: dict, last: dict, factor: float = 100.0) -> Causes:
    """From the instrument's per-module stats at step 1 and at the end: the layer whose output scale
    exploded or collapsed most, and the layer with the smallest output-gradient RMS at step 1."""
    out = Causes()
    ratios = {n: last[n]["rms"] / first[n]["rms"] for n in first if n in last and "rms" in first[n]
              and first[n]["rms"] > 0 and math.isfinite(first[n]["rms"])}
    if ratios:
        up = max(ratios, key=lambda n: ratios[n] if math.isfinite(ratios[n]) else math.inf)
        down = min(ratios, key=ratios.get)
        if not math.isfinite(ratios[up]) or ratios[up] > factor:
            out.add("scale-exploded", f"the output scale of {up} exploded during training (RMS x{ratios[up]:.3g})")
        if ratios[down] < 1 / factor:
            out.add("scale-collapsed", f"the output scale of {down} collapsed during training (RMS x{ratios[down]:.3g})")
    grads = {n: st["grad_rms"] for n, st in first.items() if "grad_rms" in st and math.isfinite(st["grad_rms"])}
    if grads:
        top, low = max(grads.values()), min(grads, key=grads.get)
        if top > 0 and grads[low] < top / 1e4:
            out.add("grads-vanish", f"gradients vanish at {low} at step 1 (output-gradient RMS {grads[low]:.3g}, largest layer "
                       f"{top:.3g})")
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


def _z_scores(model, vx, vy, real, zero) -> tuple[float, float]:
    """How many standard errors real inputs beat zeroed ones on held-out (vx, vy): by accuracy
    (two-proportion) and by per-example loss (paired); ``real``/``zero`` are ``_loss_acc`` results.

    The accuracy baseline is the larger of the zeroed inputs' accuracy and the chance accuracy of the
    real predictions (sum over classes of predicted share x label share): blank inputs predict one
    class, whose share of the held-out labels can fall below chance, and a model guessing from noise
    would otherwise look better than blank inputs."""
    logits_real = _train_logits(model, vx)
    k = logits_real.shape[1]
    pred_share = torch.bincount(logits_real.argmax(1), minlength=k).double() / len(vy)
    label_share = torch.bincount(vy, minlength=k).double() / len(vy)
    base = max(zero[1], float((pred_share * label_share).sum()))
    pooled = (real[1] + base) / 2
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * 2 / max(len(vy), 1))
    gain, gain_se = paired_gain(F.cross_entropy(logits_real, vy, reduction="none"),
                                _per_example_loss(model, torch.zeros_like(vx), vy, "train"))
    return (real[1] - base) / se, gain / gain_se


def _leaning_real(model, vx, vy, real, zero) -> bool:
    """True when real inputs beat zeroed ones by at least 1 standard error on both scores."""
    return min(_z_scores(model, vx, vy, real, zero)) >= 1.0


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


@check("input-independent")
def input_independent(make_model, data: CheckData, max_steps: int = 300, every: int = 25) -> CheckResult:
    """Train on the training stream; on held-out data, real inputs must then beat zeroed inputs clearly.

    Zeroed (normalised) inputs are the mean image: whatever a model predicts for them it learned from
    the labels alone. Stops early once real inputs beat them by 0.05 ln K in loss (and in accuracy).
    Judged in train mode (batch statistics, as the training loss); when eval mode does not show the
    win yet (BatchNorm running statistics lagging), the result is a WARN (``eval-mode-differs``). When
    the loss margin is missed but real inputs still clearly win on the held-out images - accuracy
    higher by more than 3 standard errors (two-proportion), or the per-example loss lower by more than
    3 standard errors of the paired difference - the model uses its inputs and learns slowly: a WARN
    (``slow-start``), not a FAIL. Neither happens when the labels carry no information about the images
    (the real inputs then do no better than blank ones) or when the held-out labels disagree with the
    training labels (real inputs do worse). The 3-standard-error bar is ours: a one-sided false-alarm
    rate of about 0.1 % under the null of no gain. When ``max_steps`` end undecided but real inputs lead
    by at least 1 standard error on both scores, training goes on for another ``max_steps`` (a second
    look, which a data bug seldom earns: its real inputs do not lower the held-out loss).
    """
    model = fresh(make_model)
    run = data.run(model, clean=False)
    dev = _device(run.model)
    vx, vy = (t.to(dev) for t in data.held_out())
    margin = 0.05 * math.log(data.num_classes)
    std0 = _eval_logits(run.model, vx).std().item()
    losses, real, zero = [], (math.inf, 0.0), (math.inf, 0.0)
    limit, i = max_steps, 0
    while i < limit:
        losses.append(run.step().loss)
        i += 1
        if not math.isfinite(losses[-1]):
            break
        if i % every == 0 or i == limit:
            real = _loss_acc(run.model, vx, vy, "train")
            zero = _loss_acc(run.model, torch.zeros_like(vx), vy, "train")
            if real[0] <= zero[0] - margin and real[1] > zero[1]:
                break
            if i == limit == max_steps and _leaning_real(run.model, vx, vy, real, zero):
                limit = 2 * max_steps  # inconclusive but leaning to the real inputs: one more budget
    ok = real[0] <= zero[0] - margin and real[1] > zero[1]
    n = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    causes = Causes()
    status = "pass" if ok else "fail"
    real_eval = _loss_acc(run.model, vx, vy, "eval")
    zero_eval = _loss_acc(run.model, torch.zeros_like(vx), vy, "eval")
    if ok and not (real_eval[0] <= zero_eval[0] - margin and real_eval[1] > zero_eval[1]):
        status = "warn"  # the model learned from its inputs (train mode); eval mode does not show it yet
        causes.add("eval-mode-differs", f"in train mode real inputs win (held-out loss {real[0]:.3f} vs {zero[0]:.3f}), "
                   f"in eval mode they do not ({real_eval[0]:.3f} vs {zero_eval[0]:.3f}, accuracy {real_eval[1]:.0%}): "
                   f"{eval_mode_difference(run.model)}; not a data fault")
    if not ok:
        if not math.isfinite(losses[-1]):
            causes.add("loss-nonfinite", "the training loss became non-finite: see overfit-batch and lr-range")
        elif (last > 0.95 * first and std0 < 1e-2
              and (std_end := _eval_logits(run.model, vx).std().item()) < 0.1):
            causes.add("outputs-near-zero", f"the training loss did not fall ({first:.3f} -> {last:.3f}) and the outputs hardly "
                          f"left zero (logit std {std0:.2g} at init, {std_end:.2g} after {len(losses)} steps): a "
                          "slow start that hides any data bug, if the lr is sane (see lr-range) - activations "
                          "shrink through depth at init (e.g. DyT or no normalisation where LayerNorm used to "
                          "rescale each stage), so the net is nearly linear and Adam needs many steps to grow the scales. Train longer, "
                          "or raise the init scale (DyT alpha0, layer scale, head init); init-scale and "
                          "loss-at-init show the scales")
        elif last > 0.95 * first:
            causes.add("targets-uninformative", f"the training loss did not fall ({first:.3f} -> {last:.3f}): the targets carry no "
                          "information about the images (labels shuffled or misaligned with the images, label "
                          "smoothing near 1, all targets equal), the lr is ~0, or the input is destroyed before "
                          "the model")
        elif last > 0.9 * math.log(data.num_classes):
            causes.add("loss-at-ln-k", f"the training loss only came down to about ln K ({first:.3f} -> {last:.3f}, ln K = "
                          f"{math.log(data.num_classes):.3f}): the model unlearned a large initial loss but has not "
                          f"learned the task yet; train longer or check the lr (lr-range)")
        else:
            causes.add("labels-memorised", f"the training loss fell ({first:.3f} -> {last:.3f}) but held-out predictions do not use "
                          "the image: labels that do not match the images (shuffled or misaligned labels) were "
                          "memorised, or train and validation label the classes in different orders")
        n_val = len(vy)
        z_acc, z_loss = _z_scores(run.model, vx, vy, real, zero) if math.isfinite(losses[-1]) else (0.0, 0.0)
        by_acc, by_loss = z_acc > 3, z_loss > 3
        if math.isfinite(losses[-1]) and (by_acc or by_loss):
            status = "warn"  # the inputs clearly help on held-out images: a slow learner, not a data fault
            evidence = (f"accuracy {real[1]:.0%} vs {zero[1]:.0%}, {z_acc:.1f} standard errors" if by_acc else
                        f"per-example loss lower, {z_loss:.1f} standard errors of the paired difference")
            causes.add("slow-start", first=True, sentence=f"on {n_val} held-out images real inputs beat blank inputs "
                             f"({evidence}), but the loss margin is not met after {len(losses)} steps: the model uses its inputs and learns slowly here (e.g. images "
                             f"small for its architecture, or a large initial loss to unlearn); not a data fault")
    return CheckResult(
        "input-independent", status,
        f"held-out loss real {real[0]:.3f} vs zeroed {zero[0]:.3f}, accuracy {real[1]:.0%} vs {zero[1]:.0%} "
        f"(train mode) after {len(losses)} steps", f"real inputs lower the loss by >= {margin:.3f} (0.05 ln K) and win in accuracy",
        "After some training, a model that uses its input must do clearly better on held-out data than the "
        "same model fed blank (mean) images, which can only predict the label prior.", causes.sentences,
        {"steps": len(losses), "real": real, "zeroed": zero, "real_eval": real_eval, "zeroed_eval": zero_eval,
         "z_scores": None if ok else (z_acc, z_loss),
         "train_losses": losses[:: max(1, len(losses) // 30)]}, causes.codes)


@check("determinism")
def determinism(make_model, data: CheckData, k: int = 6, resume_at: int = 3) -> CheckResult:
    """Same seed, same losses for k steps; a resume at step s matches the uninterrupted run; eval is deterministic."""

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


@check("lr-range")
def lr_range(make_model, data: CheckData, steps: int = 100, lo: float = 1e-7, hi: float = 10.0) -> CheckResult:
    """Exponential lr sweep on the training stream (Smith 2017), plotted to lr_range.png.

    Two lrs come out of it. The divergence lr, where the smoothed loss first climbs to 1.5x its lowest
    value so far, is robust: the loss jumps there. The loss-minimum lr is not: a 100-step sweep over
    8 decades spends ~25 steps where a model learns, so its minimum moves by 10x between seeds and
    models (measured on the built-in recipes). The suggested lr is the loss minimum / 10 (the usual
    rule), reported as a hint only. The configured lr fails within 3x of the divergence lr (once
    warmup ends, training will diverge) or 6 decades below it (an lr of ~0); it warns beyond 3x the
    loss minimum."""
    model = fresh(make_model)
    run = data.run(model, clean=False)
    lrs = [lo * (hi / lo) ** (i / (steps - 1)) for i in range(steps)]
    raw, smooth, avg = [], [], 0.0
    diverge = math.inf
    for i, lr in enumerate(lrs):
        loss = run.step(lr=lr).loss
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
    if not smooth:  # non-finite at the very first lr: nothing to sweep
        return CheckResult("lr-range", "fail", f"the loss is non-finite already at lr {lo:g}", "a finite loss to sweep",
                           "An lr sweep needs a finite loss at its smallest lr.",
                           [f"the loss is non-finite at the sweep's smallest lr ({lo:g}): the model or its data "
                            "produce NaN/inf regardless of the lr (see grad-flow and the tripwire)"],
                           {"lrs": lrs[:1], "loss": []}, ["loss-nonfinite"])
    best = min(range(len(smooth)), key=smooth.__getitem__)
    lr_min = lrs[best]
    suggest = lr_min / 10
    causes, warns = Causes(), Causes()
    if data.lr >= diverge / 3:
        causes.add("lr-too-high", f"the configured lr {data.lr:g} is {data.lr / diverge:.3g}x the lr where the sweep's loss "
                      f"diverged ({diverge:.2g}): lr too high, training will diverge or stall")
    elif data.lr > 3 * lr_min:
        warns.add("lr-past-minimum", f"the configured lr {data.lr:g} is {data.lr / lr_min:.3g}x past the sweep's loss minimum "
                     f"({lr_min:.2g}; it diverged at {diverge:.2g}); the minimum of a {steps}-step sweep is noisy, "
                     "but consider a lower lr")
    ceiling = min(diverge, hi)  # a sweep that never diverged is judged against its top lr
    floor = ceiling * 1e-6
    if data.lr < floor:
        causes.add("lr-too-low", f"the configured lr {data.lr:g} is {ceiling / data.lr:.3g}x below the lr where the "
                      f"sweep diverged ({ceiling:.2g}): lr too low, training will barely move")
    fig = _plot_lr_range(data, lrs[:len(smooth)], raw, smooth, suggest, lr_min, diverge)
    return CheckResult(
        "lr-range", "fail" if causes else "warn" if warns else "pass",
        f"diverges at lr {diverge:.2g}, loss minimum at lr {lr_min:.2g} (suggested {suggest:.2g}), "
        f"configured {data.lr:g}",
        f"configured lr in [divergence / 1e6, divergence / 3] = [{floor:.2g}, {diverge / 3:.2g}] (warns beyond "
        f"3x the loss minimum, {3 * lr_min:.2g})",
        "An exponential lr sweep shows where training is too slow (flat loss), where it works (falling loss) and "
        "where it diverges. A configured lr near the divergence point, or decades below it, is a mistake.",
        causes.sentences + warns.sentences,
        {"lrs": lrs[:len(smooth)], "loss": raw, "smoothed": smooth, "suggested_lr": suggest, "min_loss_lr": lr_min,
         "diverge_lr": diverge, "figure": str(fig) if fig else None}, causes.codes + warns.codes)


def _plot_lr_range(data: CheckData, lrs, raw, smooth, suggest, lr_min, diverge):
    if data.out_dir is None or not smooth:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot(lrs, raw, color="0.75", lw=0.8, label="loss")
    ax.plot(lrs, smooth, color="C0", label="smoothed")
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
