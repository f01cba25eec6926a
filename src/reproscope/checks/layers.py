"""Checks on the layers the three papers define, and on tensors a model keeps outside its state.

Each check builds a fresh model (seed 0, dropout off, eval mode) and runs one forward pass on at most
``N_IMAGES`` check images, hooking the modules it looks at; the rest is arithmetic on those modules
alone. Layers are found by duck typing, as the paper-figure probes find them
(``instrument/paper_probes.py``), so a user's own DyT or rational counts:

- DyT-like: a module with a tensor ``alpha`` (``model.layers.dyt_like``) that calls tanh in its
  forward or says which ``squash`` it uses (our DyT's Table 7 ablation);
- rational (KAT-like): a module whose class name contains "Rational" and that has parameters
  (``paper_probes.rational_like``);
- Gated CNN block (MambaOut): our ``GatedCNNBlock``, or a module whose class name contains "GatedCNN".

Checks (names; cause codes in brackets):

- ``tensor-attributes`` [plain-tensor-attribute]: a module attribute that is a plain tensor (neither a
  parameter nor a buffer) and is read during the forward pass: it is never trained, not in the
  state_dict (not saved, not loaded) and not moved by ``.to()``. FAIL; no threshold.
- ``rational-denominator`` [rational-pole, rational-pole-possible]: the denominator Q of every
  rational, over the inputs it sees in the forward pass and over the fit range [-3, 3] (KAT Sec. 4.4).
  FAIL when min |Q| < ``MIN_DENOMINATOR`` (1e-3, our threshold: the paper's Q = 1 + |...| is >= 1
  everywhere, so any value near 0 comes from another form) or Q changes sign; WARN when Q has a form
  that can reach 0 once its coefficients train (1 + sum |b_i| x^i, the public code's PyTorch fallback,
  or 1 + sum b_i x^i). How Q is built is read from the module's ``denominator`` attribute (ours) or
  found by evaluating P / Q for each known form from the module's numerator and denominator
  coefficient tensors against the module's own outputs; when neither works: "not measured".
- ``paper-init`` [paper-init]: initial values against the papers' (DyT Sec. 3 / Appendix A: alpha0
  0.5, gamma 1, beta 0; KAT Sec. 4.4: F1 fitted to the identity, F2 to Swish; MambaOut Sec. 4:
  trunc_normal(0.02) weights). DyT's scale (gamma) and shift (beta) are told apart by their role,
  not their name: each tensor is raised by 1 in turn and the module re-run on its own input; the
  shift moves every output by exactly 1, the scale by an amount that depends on the input. gamma or
  beta off by more than ``DYT_TOL``: FAIL. alpha other than 0.5: pass when the model declares it
  (``alpha0`` on the module, or ``dyt_alpha0`` / ``cfg.dyt_alpha0`` on the model, as our recipes'
  ``model.dyt_alpha0`` does), else WARN (the paper finds 0.5-1.2 trains, Sec. 7). A rational that
  differs from its target by more than ``RATIONAL_TOL`` (1e-2, ours; the fits reach ~1e-6) on
  [-3, 3]: WARN. Gated CNN Linear/Conv weight std outside [0.02 / ``STD_RATIO``, 0.02 *
  ``STD_RATIO``] (1.5, ours): WARN.

A model without the layers a check looks at passes, saying "nothing to check" (a LayerNorm ViT has no
denominator); a model whose layers the check finds but cannot read gets "not measured"
(``core.not_measured``: neither a pass nor a fail), saying why.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..model.layers import dyt_like, first_tensor
from .core import Causes, CheckData, CheckResult, block_modules, check, fresh

try:  # the "not measured" status (core.NOT_MEASURED); a pass that says "not measured" where core lacks it
    from .core import not_measured as _core_not_measured
except ImportError:  # pragma: no cover
    _core_not_measured = None

N_IMAGES = 8  # check images in the one forward pass
MIN_DENOMINATOR = 1e-3  # ours: below this |Q| the rational is at (or next to) a pole
FIT_RANGE = (-3.0, 3.0)  # KAT Sec. 4.4: the interval the rationals are fitted on
GRID = 6001  # points over FIT_RANGE for Q (coefficients only: cheap)
MODULE_GRID = 601  # points over FIT_RANGE when the module itself is evaluated
MATCH_TOL = 1e-4  # a denominator form explains the module when max|P/Q - F| <= MATCH_TOL * (1 + max|F|)
DYT_ALPHA0 = 0.5  # DyT paper, Sec. 3 / Appendix A (ViT, ConvNeXt)
DYT_TOL = 1e-5  # gamma, beta, alpha: the paper's values are exact constants
RATIONAL_TOL = 1e-2  # ours: the paper-form fits reach ~1e-6 (model/kat.py), the public code's 1.3e-4
GATED_STD = 0.02  # MambaOut Sec. 4 (and its reference code): trunc_normal(std=0.02)
STD_RATIO = 1.5  # ours: a 48 x 256 weight's sample std is within 2% of its init std
FORMS = ("paper", "abs_terms", "signed_terms", "plain")
POLE_PRONE = {"signed_terms": "1 + sum |b_i| x^i", "plain": "1 + sum b_i x^i"}


def _model_and_batch(make_model, data: CheckData) -> tuple[nn.Module, torch.Tensor]:
    return fresh(make_model).eval(), data.x[:N_IMAGES]


def _not_measured(name: str, why: str, expected: str, explanation: str) -> CheckResult:
    """Nothing of what the check measures is in this model: "not measured", never a pass or a fail."""
    if _core_not_measured is not None:
        return _core_not_measured(name, why, expected, explanation)
    return CheckResult(name, "pass", f"not measured: {why}", expected, explanation)


def plain_tensor_attributes(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"module.attr": tensor}`` for each plain tensor attribute (not a parameter, not a buffer) that
    the forward pass ``model(x)`` uses, as ``model.observe_tensors.plain_tensor_attributes`` finds them,
    with the tensors themselves so that the check can say which ones want gradients."""
    from ..model.observe_tensors import plain_tensor_attributes as found
    mods = dict(model.named_modules())
    return {f"{mname}.{attr}" if mname else attr: getattr(mods[mname], attr) for mname, attr, _ in found(model, x)}


@check("tensor-attributes")
def tensor_attributes(make_model, data: CheckData) -> CheckResult:
    """Plain tensor attributes used in forward (code ``plain-tensor-attribute``, FAIL).

    Measures: every tensor a module keeps as a plain attribute (``self.t = torch.ones(...)``, not
    ``nn.Parameter`` or ``register_buffer``) that a torch function reads during one forward pass on
    ``N_IMAGES`` check images. Such a tensor is never trained (the optimizer gets ``parameters()``),
    never saved or loaded (not in ``state_dict``) and not moved by ``.to(device)``. No threshold: one
    is a finding. Unread plain tensors are not flagged. A model without any: pass. Detection:
    ``model.observe_tensors.plain_tensor_attributes`` (tensors directly in a module's ``vars()``)."""
    model, x = _model_and_batch(make_model, data)
    found = plain_tensor_attributes(model, x)
    causes = Causes()
    for name, t in found.items():
        trained = " (requires_grad=True, yet the optimizer never sees it)" if t.requires_grad else ""
        causes.add("plain-tensor-attribute",
                   f"{name} is a plain tensor {tuple(t.shape)} used in forward{trained}: it is not a parameter or a "
                   f"buffer, so it is never trained, not in the state_dict and not moved by .to(); make it "
                   f"nn.Parameter(...) if it should learn, else self.register_buffer({name.rsplit('.', 1)[-1]!r}, ...)")
    return CheckResult(
        "tensor-attributes", "fail" if causes else "pass",
        f"{len(found)} plain tensor attribute{'s' * (len(found) != 1)} read in forward"
        + (f": {', '.join(list(found)[:4])}" + (" ..." if len(found) > 4 else "") if found else ""),
        "0 (every tensor the forward reads is a parameter, a buffer or computed from the input)",
        "A tensor kept as a plain module attribute is invisible to the optimizer, to state_dict (checkpoints) "
        "and to .to(device): a learnable scale written that way never trains, and a mask or table stays on "
        "the CPU when the model moves to the GPU.",
        causes.sentences, {"attributes": {n: list(t.shape) for n, t in found.items()}}, causes.codes)


# ----------------------------------------------------------------------------- rationals

def _rational_like(m: nn.Module) -> bool:
    from ..instrument.paper_probes import rational_like
    return rational_like(m)


def _coefficients(m: nn.Module) -> tuple[tuple[str, torch.Tensor] | None, tuple[str, torch.Tensor] | None]:
    """(numerator, denominator) coefficient tensors of a rational, by name: "num"/"den" in the name
    (``numerator``, ``weight_denominator``), else ``a``/``b`` (ours), ``p``/``q``."""
    ts = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
    ts = {n: t for n, t in ts.items() if t.is_floating_point() and t.dim() in (1, 2)}

    def pick(part: str, short: tuple[str, ...]):
        for n, t in ts.items():
            if part in n.lower():
                return n, t
        for n in short:
            if n in ts:
                return n, ts[n]
        return None
    return pick("num", ("a", "p")), pick("den", ("b", "q"))


def _as_groups(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().reshape(-1, t.shape[-1]) if t.dim() == 2 else t.detach().double().reshape(1, -1)


def _poly(c: torch.Tensor, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """sum_k c[:, k] x^(k + start) for x [g, n] and c [g, K] (g broadcast)."""
    return sum(c[:, k:k + 1] * x ** (k + start) for k in range(c.shape[1]))


def denominator(form: str, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Q(x) for b [g, n] (b_1..b_n) and x [g, N], in one of ``FORMS``."""
    if form == "paper":
        return 1 + _poly(b, x, 1).abs()
    if form == "abs_terms":
        return 1 + _poly(b.abs(), x.abs(), 1)
    if form == "signed_terms":
        return 1 + _poly(b.abs(), x, 1)
    return 1 + _poly(b, x, 1)


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor | None:
    """[..., C] -> [g, N] (channels in contiguous groups, as KAT's "... (g c)"), None if C % g."""
    c = x.shape[-1]
    if c % g:
        return None
    return x.detach().double().reshape(-1, g, c // g).transpose(0, 1).reshape(g, -1)


def _call_on_grid(m: nn.Module, channels: int, n: int = MODULE_GRID):
    """(x [n], m(x) [n, C]) for a grid over FIT_RANGE fed to every channel, or None if m refuses it."""
    xs = torch.linspace(*FIT_RANGE, n, dtype=torch.float64)
    p = next(iter(m.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    grid = xs.to(dtype)[:, None].expand(n, channels).contiguous()
    for shape in ((n, channels), (1, n, channels)):
        try:
            with torch.no_grad():
                out = m(grid.reshape(shape))
        except Exception:
            continue
        out = first_tensor(out)
        if isinstance(out, torch.Tensor) and out.numel() == n * channels:
            return xs, out.detach().double().reshape(n, channels)
    return None


def _record(model: nn.Module, x: torch.Tensor, select) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """{name: (module, input, output)} of the modules ``select(module)`` picks, from one forward pass
    ``model(x)``, in execution order (the first call of each)."""
    seen: dict = {}
    handles = []
    for name, m in model.named_modules():
        if select(m):
            def hook(mod, args, out, name=name):
                xi, yo = first_tensor(args), first_tensor(out)
                if xi is not None and yo is not None and name not in seen:
                    seen[name] = (mod, xi.detach().clone(), yo.detach())
            handles.append(m.register_forward_hook(hook))
    if handles:
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
    return seen


def _identify_form(m: nn.Module, xin: torch.Tensor, yout: torch.Tensor, a, b) -> tuple[str | None, str]:
    """(form, how it was found) of ``m``'s denominator: declared, or matched against its outputs."""
    declared = getattr(m, "denominator", None)
    if isinstance(declared, str) and declared in FORMS:
        return declared, "declared"
    if a is None or xin.shape != yout.shape:
        return None, "no numerator coefficients to test the known forms against the module's outputs"
    A, B = _as_groups(a), _as_groups(b)
    g = max(A.shape[0], B.shape[0])
    pts = [(_grouped(xin, g), _grouped(yout, g))]
    on_grid = _call_on_grid(m, xin.shape[-1])
    if on_grid is not None:
        pts.append((_grouped(on_grid[0][:, None].expand(-1, xin.shape[-1]), g), _grouped(on_grid[1], g)))
    if any(p[0] is None for p in pts):
        return None, f"its {xin.shape[-1]} channels do not split into {g} groups"
    errs = {}
    for form in FORMS:
        err = 0.0
        for xs, ys in pts:
            f = _poly(A, xs) / denominator(form, B, xs)
            err = max(err, ((f - ys).abs().max() / (1 + ys.abs().max())).item())
        errs[form] = err if math.isfinite(err) else math.inf
    best = _first_match(errs)
    best_err = errs.get(best, math.inf)
    if best is None:
        return None, f"none of the known denominator forms ({', '.join(FORMS)}) reproduces its outputs"
    return best, f"matched to its outputs (max rel. error {best_err:.1g})"


def _first_match(errs: dict[str, float]) -> str | None:
    """The first form in ``FORMS`` order that explains the outputs: where the batch and the fit range
    cannot tell two forms apart (e.g. all b_i >= 0), the module gets the benefit of the doubt."""
    return next((f for f in FORMS if errs[f] <= MATCH_TOL), None)


def _q_minimum(form: str, b: torch.Tensor, xin: torch.Tensor) -> dict:
    """min |Q| (with group, x, and whether on the batch or the fit grid) and whether Q changes sign."""
    B = _as_groups(b)
    g = B.shape[0]
    grid = torch.linspace(*FIT_RANGE, GRID, dtype=torch.float64).expand(g, -1)
    out = {"min_abs_q": math.inf, "sign_change": False}
    lo, hi = math.inf, -math.inf
    for where, xs in (("the fit range [-3, 3]", grid), ("the batch", _grouped(xin, g))):
        if xs is None:
            continue
        q = denominator(form, B, xs)
        lo, hi = min(lo, q.min().item()), max(hi, q.max().item())
        aq = q.abs()
        i = int(aq.argmin())
        if aq.flatten()[i].item() < out["min_abs_q"]:
            out.update(min_abs_q=aq.flatten()[i].item(), group=i // xs.shape[1], x=xs.flatten()[i].item(), where=where)
    out["sign_change"] = lo < 0 < hi
    return out


@check("rational-denominator")
def rational_denominator(make_model, data: CheckData) -> CheckResult:
    """Rational denominators near zero (codes ``rational-pole`` FAIL, ``rational-pole-possible`` WARN).

    Measures: for each rational (KAT-like) module, its denominator Q over the inputs it receives in one
    forward pass on ``N_IMAGES`` check images and over ``GRID`` points of the fit range [-3, 3] (KAT Sec.
    4.4), per coefficient group. Threshold: min |Q| < ``MIN_DENOMINATOR`` = 1e-3 (ours: the paper's
    Q = 1 + |sum b_i x^i| never drops below 1), or Q taking both signs, is a FAIL; a form that can reach
    0 once trained (1 + sum |b_i| x^i, the public code's PyTorch fallback; 1 + sum b_i x^i) is a WARN.
    The form comes from the module's ``denominator`` attribute, else from matching P / Q for each known
    form against the module's own outputs, using its numerator/denominator coefficient tensors (names
    with "num"/"den", or a/b, p/q). No rationals: pass ("nothing to check"). Not measured: rationals, but
    none whose coefficients and form can be found (the measured line also names any rational left out)."""
    model, x = _model_and_batch(make_model, data)
    recs = [(n, *r) for n, r in _record(model, x, _rational_like).items()]
    if not recs:  # nothing to check is not a failure to measure
        return CheckResult("rational-denominator", "pass", "no rational (KAT-like) layers: nothing to check",
                           f"min |Q| >= {MIN_DENOMINATOR:g}, no sign change",
                           "Only models with rational activations (KAT's GR-KAN) have a denominator to check.")
    causes, rows, unmeasured, prone = Causes(), {}, {}, {}
    for name, m, xin, yout in recs:
        (a_name, a), den = _coefficients(m)
        if den is None:
            unmeasured[name] = "no denominator coefficient tensor (a name with 'den', or b / q)"
            continue
        b_name, b = den
        form, how = _identify_form(m, xin, yout, a, b)
        if form is None:
            unmeasured[name] = how
            continue
        r = _q_minimum(form, b, xin)
        rows[name] = {"form": form, "found": how, **r}
        if r["min_abs_q"] < MIN_DENOMINATOR or r["sign_change"]:
            poles = causes.codes.count("rational-pole")
            if poles < 3:
                causes.add("rational-pole",
                           f"{name}: its denominator ({form}, from {b_name}) reaches |Q| = {r['min_abs_q']:.3g} at x = "
                           f"{r['x']:.3g} (group {r['group']}, on {r['where']})"
                           + (" and changes sign" if r["sign_change"] else "")
                           + ": the rational has a pole there; the paper's Q = 1 + |sum b_i x^i| is >= 1 everywhere")
            elif poles == 3:
                causes.add("rational-pole", "more rationals reach a pole: details['rationals'] lists each")
        elif form in POLE_PRONE:
            prone.setdefault(form, []).append(name)
    for form, names in prone.items():
        causes.add("rational-pole-possible",
                   f"{len(names)} rational{'s' * (len(names) != 1)} (e.g. {names[0]}) build the denominator as "
                   f"{POLE_PRONE[form]}: >= {MIN_DENOMINATOR:g} now, but it can reach 0 for x < 0 once b trains "
                   f"(KAT's paper form 1 + |sum b_i x^i| cannot; the public code's kernels use 1 + sum |b_i| |x|^i)")
    if not rows:
        first = next(iter(unmeasured))
        return _not_measured("rational-denominator", f"{len(unmeasured)} rational layers, none measurable: {first}: "
                             f"{unmeasured[first]}", f"min |Q| >= {MIN_DENOMINATOR:g}, no sign change",
                             "The denominator is read from the module's coefficient tensors (names with 'num'/'den', "
                             "or a/b, p/q) and its form from a 'denominator' attribute or from its outputs.")
    status = "fail" if "rational-pole" in causes else "warn" if causes else "pass"
    worst = min(rows, key=lambda n: rows[n]["min_abs_q"]) if rows else None
    measured = (f"min |Q| {rows[worst]['min_abs_q']:.3g} over {len(rows)} rationals (at {worst}, x = "
                f"{rows[worst]['x']:.3g})" if worst else "not measured")
    if unmeasured:
        measured += f"; not measured for {len(unmeasured)}: {next(iter(unmeasured))} ({next(iter(unmeasured.values()))})"
    return CheckResult(
        "rational-denominator", status, measured, f"min |Q| >= {MIN_DENOMINATOR:g} on the batch and on [-3, 3], "
        "no sign change",
        "A rational P(x)/Q(x) blows up where Q reaches 0. KAT's Q = 1 + |b1 x + ... + b4 x^4| is at least 1; "
        "other ways of writing it (signed powers, no absolute value) can reach 0 and produce inf/NaN.",
        causes.sentences, {"rationals": rows, "not_measured": unmeasured}, causes.codes)


# ----------------------------------------------------------------------------- paper init

class _CallsTanh(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.tanh = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("tanh", "tanh_"):
            self.tanh = True
        return func(*args, **(kwargs or {}))


def _declared_alpha0(model: nn.Module, m: nn.Module) -> float | None:
    for obj in (m, model, getattr(model, "cfg", None)):
        for attr in ("alpha0", "dyt_alpha0"):
            v = getattr(obj, attr, None) if obj is not None else None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
    return None


def _value(t: torch.Tensor) -> str:
    t = t.detach().float()
    lo, hi = t.min().item(), t.max().item()
    return f"{lo:.3g}" if abs(hi - lo) <= DYT_TOL * max(1.0, abs(lo)) else f"{lo:.3g}..{hi:.3g} (mean {t.mean().item():.3g})"


def dyt_roles(m: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """{tensor name: "scale" | "shift"} for a DyT-like module's tensors other than alpha, by role: each
    is raised by 1 in turn and ``m`` re-run on ``x``; the shift moves every output by exactly 1, the
    scale by an amount that depends on the input. Tensors that change nothing are left out."""
    out = {}
    tensors = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
    with torch.no_grad():
        y0 = first_tensor(m(x)).double()
        for n, t in tensors.items():
            if n == "alpha" or not t.is_floating_point():
                continue
            keep = t.detach().clone()
            try:
                t.add_(1)
                d = first_tensor(m(x)).double() - y0
            finally:
                t.copy_(keep)
            if d.abs().max().item() <= 1e-6:
                continue
            out[n] = "shift" if (d - 1).abs().max().item() <= 1e-4 else "scale"
    return out


def _capped(out: Causes, code: str, sentences: list[str], what: str, limit: int = 3) -> None:
    """The first ``limit`` sentences as causes, then one saying how many more (the details list each)."""
    for sent in sentences[:limit]:
        out.add(code, sent)
    if len(sentences) > limit:
        out.add(code, f"and {len(sentences) - limit} more {what} (details['layers'] lists every layer)")


def _dyt_findings(model: nn.Module, seen: dict, causes: Causes, warn: Causes, rows: dict) -> int:
    count, off, alpha_off = 0, [], []
    for n, m in model.named_modules():
        if not dyt_like(m):
            continue
        if n not in seen:
            rows[n] = "not measured: it did not run in the forward pass"
            continue
        x_in = seen[n][1][:2]
        mode = _CallsTanh()
        with torch.no_grad(), mode:
            m(x_in)
        if not mode.tanh and not isinstance(getattr(m, "squash", None), str):
            continue  # a tensor named alpha, but not a DyT
        count += 1
        alpha = m.alpha.detach().float()
        declared = _declared_alpha0(model, m)
        expect = declared if declared is not None else DYT_ALPHA0
        row = {"alpha": _value(alpha), "alpha0_declared": declared}
        if (alpha - expect).abs().max().item() > DYT_TOL * max(1.0, abs(expect)):
            alpha_off.append(f"{n}.alpha starts at {_value(alpha)} but the model declares alpha0 = {declared:g}"
                             if declared is not None else
                             f"{n}.alpha starts at {_value(alpha)}; the paper's alpha0 is {DYT_ALPHA0:g} for ViT and "
                             f"ConvNeXt (0.5-1.2 generally trains, larger models need smaller); give the layer an "
                             f"alpha0 attribute if another value is meant")
        roles = dyt_roles(m, x_in)
        row["roles"] = roles
        tensors = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
        for t_name, role in roles.items():
            t = tensors[t_name].detach().float()
            want, paper = (1.0, "gamma") if role == "scale" else (0.0, "beta")
            row[t_name] = _value(t)
            if (t - want).abs().max().item() > DYT_TOL:
                off.append(f"{n}.{t_name} (the {role}) starts at {_value(t)}; the paper's {paper} starts at {want:g}")
        rows[n] = row
    _capped(causes, "paper-init", off, "DyT tensors start off the paper's gamma = 1 / beta = 0")
    _capped(warn, "paper-init", alpha_off, "DyT alphas start off alpha0")
    return count


def _rational_targets(model: nn.Module, seen: dict, warn: Causes, rows: dict) -> int:
    """KAT Sec. 4.4: in each GR-KAN, F1 (the first rational to run) starts as the identity and F2 (the
    second) as Swish."""
    recs = [(n, *r) for n, r in seen.items() if _rational_like(r[0])]
    if not recs:
        return 0
    targets = {"identity": lambda t: t, "Swish": lambda t: t * torch.sigmoid(t), "GELU": F.gelu}
    fits: dict[str, str | None] = {}
    for name, m, xin, _ in recs:
        on_grid = _call_on_grid(m, xin.shape[-1])
        if on_grid is None:
            rows[name] = "not measured: it does not take a [N, C] grid of inputs"
            fits[name] = None
            continue
        xs, ys = on_grid
        errs = {k: (ys - f(xs)[:, None]).abs().max().item() for k, f in targets.items()}
        best = min(errs, key=errs.get)
        fits[name] = best if errs[best] <= RATIONAL_TOL else "another function"
        rows[name] = {"starts_as": fits[name], "max_error": errs}
    order = [n for n, *_ in recs]
    blocks = [b for b, _ in block_modules(model)]
    groups: dict[str, list[str]] = {}
    for n in order:
        owner = next((b for b in blocks if n.startswith(b + ".")), None)
        groups.setdefault(owner or "", []).append(n)
    pairs = []
    for owner, names in groups.items():
        if owner and len(names) == 2:
            pairs.append(tuple(names))
        elif not owner and len(names) % 2 == 0:
            pairs += list(zip(names[::2], names[1::2]))
    off = [(n, which, want) for f1, f2 in pairs for n, want, which in ((f1, "identity", "F1"), (f2, "Swish", "F2"))
           if fits.get(n) is not None and fits[n] != want]
    if off:
        n, which, want = off[0]
        warn.add("paper-init", f"{len(off)} rational{'s' * (len(off) != 1)} start off the paper's fit, e.g. {n} ({which}) "
                               f"starts as {fits[n]} (max error vs {want} {rows[n]['max_error'][want]:.3g} on [-3, 3]); "
                               f"the paper initialises F1 to the identity and F2 to Swish (Sec. 4.4; Table 10: "
                               f"Id/Swish 74.6 top-1, Swish/Swish 74.4, Id/Id 69.7)")
    return len(recs)


def _gated_cnn_findings(model: nn.Module, warn: Causes, rows: dict) -> int:
    from ..model.mambaout import GatedCNNBlock
    blocks = [(n, m) for n, m in model.named_modules()
              if isinstance(m, GatedCNNBlock) or "gatedcnn" in type(m).__name__.lower()]
    off = {}
    for bn, b in blocks:
        for n, m in b.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                std = m.weight.detach().float().std().item()
                rows[f"{bn}.{n}.weight"] = std
                if not GATED_STD / STD_RATIO <= std <= GATED_STD * STD_RATIO:
                    off[f"{bn}.{n}.weight"] = std
    if off:
        first = next(iter(off))
        warn.add("paper-init", f"{len(off)} Gated CNN weights start with std outside {GATED_STD / STD_RATIO:.3g}.."
                               f"{GATED_STD * STD_RATIO:.3g} (e.g. {first}: {off[first]:.3g}); MambaOut initialises "
                               f"Linear and Conv weights with trunc_normal(std={GATED_STD})")
    return len(blocks)


@check("paper-init")
def paper_init(make_model, data: CheckData) -> CheckResult:
    """Initial values of the papers' layers against the papers' (code ``paper-init``).

    Measures, on a fresh model and one forward pass of ``N_IMAGES`` check images:
    - DyT-like layers (tensor ``alpha`` and a tanh): alpha against alpha0 = 0.5 (DyT Sec. 3, Appendix A;
      a value the model declares, as ``alpha0`` on the layer or ``dyt_alpha0`` on the model/its cfg, is
      accepted), the scale (gamma) against 1 and the shift (beta) against 0, told apart by role
      (``dyt_roles``), tolerance ``DYT_TOL`` = 1e-5. gamma/beta off: FAIL; alpha off: WARN.
    - Rationals (KAT Sec. 4.4): F1 of each GR-KAN against the identity and F2 against Swish on [-3, 3],
      max error <= ``RATIONAL_TOL`` = 1e-2 (ours); off: WARN (the paper's Table 10 trains other pairs).
    - Gated CNN blocks (MambaOut Sec. 4): Linear/Conv weight std within x``STD_RATIO`` (1.5, ours) of
      0.02; off: WARN. The paper states no other per-layer value (no layer scale, standard LayerNorm).
    A model with none of these layers: pass ("nothing to check")."""
    model, x = _model_and_batch(make_model, data)
    causes, warn, rows = Causes(), Causes(), {}
    seen = _record(model, x, lambda m: dyt_like(m) or _rational_like(m))  # the one forward pass
    n_dyt = _dyt_findings(model, seen, causes, warn, rows)
    n_rat = _rational_targets(model, seen, warn, rows)
    n_gated = _gated_cnn_findings(model, warn, {})
    counts = [f"{k} {what}" for k, what in ((n_dyt, "DyT"), (n_rat, "rational"), (n_gated, "Gated CNN")) if k]
    if not counts:  # nothing to check is not a failure to measure
        return CheckResult("paper-init", "pass", "no DyT, rational or Gated CNN layers: nothing to check",
                           "the papers' initial values", "Only the layers the papers define have init values to "
                           "compare (DyT alpha0/gamma/beta, KAT's rational fits, MambaOut's trunc_normal(0.02)).")
    status = "fail" if causes else "warn" if warn else "pass"
    causes.extend(warn)
    return CheckResult(
        "paper-init", status,
        f"{', '.join(counts)} layers; {len(causes.codes)} initial value{'s' * (len(causes.codes) != 1)} off the paper's",
        "DyT alpha0 0.5 (or as declared), gamma 1, beta 0; KAT F1 = identity, F2 = Swish on [-3, 3]; "
        "Gated CNN weights std 0.02",
        "A layer the paper defines should start where the paper starts it: e.g. a DyT whose shift (beta) "
        "starts at 1 adds a constant to every token at every layer, and trains to a different result "
        "(a third-party DyT reproduction that did this reported DyT below LayerNorm).",
        causes.sentences, {"layers": rows}, causes.codes)
