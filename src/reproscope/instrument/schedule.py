"""Read a learning-rate schedule back from the lr curve a training loop actually used.

Input: ``lrs[i]``, the lr of optimizer step ``i + 1`` (what ``opt.param_groups[0]["lr"]`` held when
``opt.step()`` ran). Output: a :class:`ScheduleReading` (peak, warmup length and shape, decay shape,
final ratio, how often the lr changes), so that an audit can set what ran beside what a paper or a
config says: a warmup written in epochs that ran in steps, a scheduler stepped per epoch, a cosine
that never finished. No torch needed.

How it reads. Every threshold below is ours, chosen on torch's and timm's schedulers; none comes
from a paper.

- peak: the largest lr; ``peak_step`` is the first step at >= 0.999 x peak (PEAK_FRAC).
- changes: a step changes the lr when it moves by more than 1e-8 x peak (CHANGE_TOL). The curve is
  reduced to knots, the first step of each plateau (every step for a per-step schedule, one a epoch
  for a per-epoch one). ``lr_changes_every`` is the median gap between the knots from the peak on
  (over the whole curve when the lr never changes after the peak); 0 when the lr never changes.
- warmup: none (0 steps, shape "none") when the peak is step 1 or the first lr is already >= 0.5 x
  peak (NO_WARMUP_FRAC). Otherwise the steps before ``peak_step``; when the ramp starts one rung above
  zero (first lr >= half the ramp's mean rise per rung, as LambdaLR's min(1, (s+1)/W) does) the rung
  on which it reaches the peak counts too, so a W-step warmup reads W whether it starts near 0
  (LinearLR, timm) or at peak/W. Shape "linear" when the ramp's knots lie within an rms of 1% of its
  rise (LINEAR_RMS) from their least-squares line, else "other" (OneCycleLR's cosine ramp).
- decay, read from the peak step to the last step:
  "unknown" with fewer than 4 steps (MIN_DECAY_STEPS), or when the lr ends back near the peak;
  "constant" when its range is <= 1e-3 x peak (CONST_TOL);
  "step" when it changes 1 to 6 times (MAX_STEP_DROPS), each time dropping to <= 0.7 x the level
  before (STEP_RATIO): StepLR, MultiStepLR. A cosine's first drop is always gentler, so a per-epoch
  cosine does not read "step";
  otherwise the knots are normalised, t in [0, 1] from the peak to the last knot and
  y = (lr - final) / (peak - final), and fitted by: "linear" 1 - t; "exponential" (q^t - q) / (1 - q),
  q = final / peak (log-linear in lr); "cosine" 0.5 (1 + cos(pi u)) rescaled to run from 1 to 0, u
  running linearly over [a, b], a in [0, 0.25] (a run that starts past the cosine's top, as timm's
  does without warmup_prefix), b in [0.5, 1] (a run, or a per-epoch staircase, that stops before the
  cosine's end), the best point of a grid. The smallest rms residual wins when it is <= 0.05
  (MAX_FIT_RMS) and there are >= 5 knots (MIN_KNOTS); otherwise "unknown". Other polynomial decays
  are not candidates (they read as whichever fits, or "unknown").
- ``fit_error``: every candidate's rms residual on the normalised decay, None where it does not
  apply, so that the margin between the winner and the runner-up is visible. "step" there is the
  piecewise-constant fit with at most 7 levels cut at the largest jumps (on every step, not knots),
  "constant" the rms of y about its mean (of lr / peak when the decay is constant).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

PEAK_FRAC = 0.999
NO_WARMUP_FRAC = 0.5
LINEAR_RMS = 0.01
CHANGE_TOL = 1e-8
MIN_DECAY_STEPS = 4
CONST_TOL = 1e-3
MAX_STEP_DROPS = 6
STEP_RATIO = 0.7
MIN_KNOTS = 5
MAX_FIT_RMS = 0.05
_MAX_FIT_POINTS = 2000  # knots are subsampled to this many for the fits
_COS_A = np.linspace(0.0, 0.25, 11)
_COS_B = np.linspace(0.5, 1.0, 51)


@dataclass(frozen=True)
class ScheduleReading:
    """What :func:`read_schedule` read; lrs in the optimizer's units, steps are optimizer steps."""

    steps: int  # optimizer steps observed
    peak_lr: float
    peak_step: int  # 1-based, first step at >= PEAK_FRAC x peak
    warmup_steps: int
    warmup_share: float  # warmup_steps / steps
    warmup_shape: str  # "linear", "other" or "none"
    decay: str  # "cosine", "linear", "exponential", "step", "constant" or "unknown"
    final_lr: float
    final_ratio: float  # final_lr / peak_lr (1.0 when every lr is 0)
    lr_changes_every: int  # median steps between lr changes; 0 when the lr never changes
    fit_error: dict = field(default_factory=dict)  # candidate -> rms residual (None: not fitted)
    warmup_epochs: float | None = None  # warmup_steps / steps_per_epoch, when that was given

    def to_dict(self) -> dict:
        return asdict(self)


def _rms(r: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(r))))


def _knots(x: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the first step of each plateau (where the lr moved by more than ``tol``)."""
    return np.concatenate(([0], np.flatnonzero(np.abs(np.diff(x)) > tol) + 1))


def _warmup(x: np.ndarray, p: int, peak: float, tol: float) -> tuple[int, str]:
    if p == 0 or x[0] >= NO_WARMUP_FRAC * peak:
        return 0, "none"
    k = _knots(x[: p + 1], tol)  # the last knot is p: the lr jumps by >= 0.1% of the peak there
    rungs = k.size - 1
    steps = p + (round(p / rungs) if x[0] >= 0.5 * (peak - x[0]) / rungs else 0)
    if k.size <= 2:
        return steps, "linear"
    line = np.polyval(np.polyfit(k, x[k], 1), k)
    return steps, "linear" if _rms(x[k] - line) <= LINEAR_RMS * (peak - x[0]) else "other"


def _cosine_rms(t: np.ndarray, y: np.ndarray) -> float:
    a, b = _COS_A[:, None, None], _COS_B[None, :, None]
    c0, c1 = np.cos(np.pi * a), np.cos(np.pi * b)  # c0 > c1: b - a >= 0.25
    model = (np.cos(np.pi * (a + (b - a) * t)) - c1) / (c0 - c1)
    return float(np.sqrt(np.mean(np.square(model - y), axis=-1)).min())


def _step_rms(y: np.ndarray) -> float:
    cuts = np.sort(np.argsort(np.abs(np.diff(y)))[::-1][:MAX_STEP_DROPS]) + 1
    return _rms(np.concatenate([p - p.mean() for p in np.split(y, cuts)]))


def _decay(seg: np.ndarray, kd: np.ndarray, peak: float) -> tuple[str, dict]:
    fit = dict.fromkeys(("cosine", "linear", "exponential", "step", "constant"))
    if seg.size < MIN_DECAY_STEPS:
        return "unknown", fit
    if seg.max() - seg.min() <= CONST_TOL * peak:
        fit["constant"] = _rms(seg - seg.mean()) / peak if peak > 0 else 0.0
        return "constant", fit
    final = float(seg[-1])
    if peak - final <= CONST_TOL * peak:  # goes down and comes back up: not a decay we read
        return "unknown", fit
    y = (seg - final) / (peak - final)
    fit["constant"], fit["step"] = _rms(y - y.mean()), _step_rms(y)
    if kd.size >= 3:
        k = kd
        if kd.size > _MAX_FIT_POINTS:
            k = kd[np.unique(np.linspace(0, kd.size - 1, _MAX_FIT_POINTS).round().astype(int))]
        t, yk = k / k[-1], y[k]
        fit["linear"] = _rms(yk - (1 - t))
        q = final / peak
        if q > 0:
            fit["exponential"] = _rms(yk - (q**t - q) / (1 - q))
        fit["cosine"] = _cosine_rms(t, yk)
    levels = seg[kd]
    if 1 <= levels.size - 1 <= MAX_STEP_DROPS and np.all(levels[1:] <= STEP_RATIO * levels[:-1]):
        return "step", fit
    smooth = {s: fit[s] for s in ("cosine", "linear", "exponential") if fit[s] is not None}
    if kd.size >= MIN_KNOTS and smooth:
        best = min(smooth, key=smooth.get)
        if smooth[best] <= MAX_FIT_RMS:
            return best, fit
    return "unknown", fit


def read_schedule(lrs: Sequence[float], steps_per_epoch: int | None = None) -> ScheduleReading:
    """Read the schedule of an observed lr curve (rules and thresholds: the module docstring).

    ``lrs[i]`` is the lr used by optimizer step ``i + 1`` (one param group; lr units as given).
    ``steps_per_epoch`` (optimizer steps) only fills ``warmup_epochs``. Curves of any length are
    read without raising (decay "unknown" where too short to judge); non-finite or negative lrs
    raise ``ValueError``.
    """
    x = np.asarray(list(lrs), dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("read_schedule: every lr must be finite and >= 0")
    spe = steps_per_epoch if steps_per_epoch and steps_per_epoch > 0 else None
    if x.size == 0:
        return ScheduleReading(0, 0.0, 0, 0, 0.0, "none", "unknown", 0.0, 0.0, 0, {}, 0.0 if spe else None)
    peak, final = float(x.max()), float(x[-1])
    tol = CHANGE_TOL * peak
    p = int(np.argmax(x >= PEAK_FRAC * peak))
    warmup, shape = _warmup(x, p, peak, tol)
    kd = _knots(x[p:], tol)
    gaps = np.diff(kd) if kd.size > 1 else np.diff(_knots(x, tol))
    decay, fit = _decay(x[p:], kd, peak)
    return ScheduleReading(
        steps=int(x.size), peak_lr=peak, peak_step=p + 1, warmup_steps=int(warmup),
        warmup_share=warmup / x.size, warmup_shape=shape, decay=decay, final_lr=final,
        final_ratio=final / peak if peak > 0 else 1.0,
        lr_changes_every=int(round(float(np.median(gaps)))) if gaps.size else 0,
        fit_error=fit, warmup_epochs=warmup / spe if spe else None)
