"""``reproscope align MINE REF``: hold a re-implementation against the reference, layer by layer.

Two models whose modules are named and nested differently are compared the way one would by hand
(same weights, same input, compare every layer's output), automatically:

1. **Parameters and buffers** are matched REF -> MINE by shape, in *execution* order (the order in
   which their modules first run on one forward pass, then definition order within a module), so
   two ``__init__`` methods that define layers in different orders still match. A fused tensor on
   one side (``qkv`` [3C, C]) against consecutive split tensors on the other (``q``, ``k``, ``v``
   [C, C]) is matched as their concatenation along dim 0. Unmatched tensors are listed; the mapping
   is written as JSON (``--out``) that can be edited and passed back with ``--map``.
2. **Weights** of REF are copied into MINE through the mapping (buffers too, e.g. BatchNorm statistics).
3. **Forward**: one seeded batch through both, in eval mode (``train_mode=True`` reseeds before each
   forward so dropout masks match where both draw them in the same order). Modules are paired when
   the parameters under them (recursively) map onto each other exactly; pairs are compared in MINE's
   execution order and the first pair whose output differs is reported: the module itself when its
   inputs agreed (with both ``extra_repr`` when they differ, e.g. a LayerNorm eps), or the gap
   before it ("between X and Y, in Z.forward") when its input already differed, i.e. functional code
   in a parent's ``forward`` that no module owns.
4. **Backward**: cross-entropy on fixed labels; the first parameter, in reverse execution order,
   whose gradient differs.

Both models run in float64 by default (``float32=True`` keeps their own dtype): two correct
implementations written differently (fused vs split qkv, another summation order) then differ by
~1e-15, so a real deviation as small as tanh-approximated GELU at small activations (~1e-5) stands
far above the noise. Agreement of two tensors a (MINE) and b (REF): ``max|a - b| <= atol + rtol *
max|b|``, defaults 1e-10 / 1e-8 in float64 and 1e-6 / 1e-5 in float32 (ours: the matching rules and
tolerances; nothing here comes from a paper).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..config import ConfigError
from ..model.layers import first_tensor
from ..model.spec import user_model


# ----------------------------------------------------------------------------- results

@dataclass
class Divergence:
    """Where two models first differ. ``kind``: "module" (its inputs agreed, its output did not),
    "between" (the difference appears in ``where``'s own forward code, after ``after``, before
    ``before``), "shape" or "gradient"."""

    kind: str
    module: str  # MINE's module (or parameter, for "gradient")
    ref_module: str
    max_abs: float
    max_rel: float
    shapes: tuple = ()
    after: str = ""  # the last pair that still agreed
    before: str = ""
    where: str = ""  # "ClassName.forward (module name)" holding the functional code
    repr_mine: str = ""
    repr_ref: str = ""

    def sentence(self) -> str:
        d = f"max abs diff {self.max_abs:.3g}, rel {self.max_rel:.3g}"
        if self.kind == "gradient":
            return f"first gradient that differs (reverse execution order): {self.module} <- {self.ref_module} ({d})"
        if self.kind == "shape":
            return f"{self.module} outputs {self.shapes[0]} but REF's {self.ref_module} outputs {self.shapes[1]}"
        if self.kind == "between":
            return (f"outputs differ between {self.after or '<input>'} (agrees) and {self.before or '<output>'} "
                    f"(its input differs), in {self.where} ({d})")
        s = f"outputs differ after {self.module} <-> {self.ref_module}, whose inputs agree ({d})"
        if self.repr_mine != self.repr_ref:
            s += f": {self.repr_mine or '-'} vs {self.repr_ref or '-'}"
        return s


@dataclass
class AlignResult:
    params_mine: int
    params_ref: int
    mapping: dict  # MINE tensor name -> REF tensor name, or a list of REF names concatenated on dim 0 (fused)
    unmatched_mine: list[str]
    unmatched_ref: list[str]
    pairs: int  # module pairs compared
    forward: Divergence | None
    backward: Divergence | None
    output_max_abs: float
    notes: list[str] = field(default_factory=list)
    init: list[str] = field(default_factory=list)  # fresh-init statistics that differ (see init_differences)

    @property
    def agree(self) -> bool:
        """Weights that match one to one, the same outputs and gradients (init statistics are reported
        beside the verdict: they matter for training, not for these outputs)."""
        return self.forward is None and self.backward is None and not self.unmatched_mine and not self.unmatched_ref

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- matching

def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> tuple[bool, float, float]:
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        same = bool(torch.equal(torch.isfinite(a), torch.isfinite(b))) and bool(
            torch.allclose(a[torch.isfinite(a)], b[torch.isfinite(b)], atol=atol, rtol=rtol)) \
            if a.shape == b.shape else False
        return same, float("inf"), float("inf")
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return diff <= atol + rtol * scale, diff, diff / max(scale, 1e-12)


def _as_ref_layout(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """``a`` in ``b``'s shape: as is, reshaped when only size-1 dims differ ([B, C] vs [B, C, 1, 1]), or
    permuted when the dims are a unique permutation (channels-last vs channels-first)."""
    if a.shape == b.shape:
        return a
    if [n for n in a.shape if n != 1] == [n for n in b.shape if n != 1]:
        return a.reshape(b.shape)
    if a.ndim != b.ndim or sorted(a.shape) != sorted(b.shape):
        return None
    perm, used = [], set()
    for n in b.shape:
        cands = [i for i, m in enumerate(a.shape) if m == n and i not in used]
        if not cands:
            return None
        perm.append(cands[0])
        used.add(cands[0])
    return a.permute(*perm)


class _FirstUse(TorchFunctionMode):
    """Records the order in which the given tensors are first passed to any torch function or method."""

    def __init__(self, tensors: dict[int, str]):
        super().__init__()
        self.tensors, self.order = tensors, {}

    def _see(self, a) -> None:
        if isinstance(a, (list, tuple)):
            for b in a:
                self._see(b)
        elif isinstance(a, torch.Tensor):
            name = self.tensors.get(id(a))
            if name is not None and name not in self.order:
                self.order[name] = len(self.order)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._see(args)
        self._see(list(kwargs.values()))
        return func(*args, **kwargs)


def first_use_order(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Parameter/buffer name -> rank of its first use in one forward pass of ``x`` (a torch function mode
    sees every op, so a parameter used in a parent's own forward code, e.g. a layer scale or a position
    embedding, is placed where it is used, not where its module starts)."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    mode = _FirstUse({id(t): n for n, t in named.items()})
    with torch.no_grad(), mode:
        model(x)
    return mode.order


def _units(model: nn.Module, used: dict[str, int]) -> list[tuple[str, list[tuple[str, str, torch.Tensor]]]]:
    """(module name, [(full name, local name, tensor)]) for every module owning parameters or buffers
    directly, ordered by the first use of any of its tensors (modules whose tensors were never used
    last, in definition order)."""
    out = []
    for n, m in model.named_modules():
        own = [(k, t) for k, t in m.named_parameters(recurse=False)]
        own += [(k, t) for k, t in m.named_buffers(recurse=False) if t is not None and k != "num_batches_tracked"]
        if own:
            out.append((n, [(f"{n}.{k}" if n else k, k, t) for k, t in own]))
    never = len(used) + 1
    return sorted(out, key=lambda u: min(used.get(f, never) for f, _, _ in u[1]))


def _sq(t: torch.Tensor) -> tuple:
    """A tensor's shape without its size-1 dims: a layer scale [C, 1, 1] and [C] are one shape here."""
    return tuple(n for n in t.shape if n != 1)


def _pair_within(mu, ru, mapping: dict) -> bool:
    """Pair the tensors of one MINE and one REF module with the same multiset of shapes (size-1 dims
    ignored): by shape, then by name similarity among tensors of one shape. False when they differ."""
    if sorted(_sq(t) for _, _, t in mu) != sorted(_sq(t) for _, _, t in ru):
        return False
    left = list(ru)
    for full, local, t in mu:
        cands = [r for r in left if _sq(r[2]) == _sq(t)]
        best = max(cands, key=lambda r: (difflib.SequenceMatcher(None, local, r[1]).ratio(), -cands.index(r)))
        mapping[full] = best[0]
        left.remove(best)
    return True


def _fused(group, one, mapping: dict, one_is_ref: bool) -> bool:
    """k modules with identical tensors (q, k, v) against one module whose tensors are their concatenation on
    dim 0 (qkv); tensors paired by position. MINE split -> [REF fused name, index, k]; MINE fused -> [REF names]."""
    k = len(group)
    sig = [tuple(t.shape) for _, _, t in group[0][1]]
    if any([tuple(t.shape) for _, _, t in g[1]] != sig for g in group) or not sig or any(len(s) == 0 for s in sig):
        return False
    cat = [(s[0] * k, *s[1:]) for s in sig]
    if [tuple(t.shape) for _, _, t in one[1]][:len(cat)] != cat:  # the fused side may have more (a bias)
        return False
    for pos, (full1, _, _) in enumerate(one[1][:len(cat)]):
        parts = [g[1][pos][0] for g in group]
        if one_is_ref:
            for idx, part in enumerate(parts):
                mapping[part] = [full1, idx, k]
        else:
            mapping[full1] = parts
    return True


def match_tensors(mine_units, ref_units):
    """(mapping MINE name -> REF name | [REF fused name, index, parts] | [REF names], unmatched MINE names,
    unmatched REF names). Modules are walked in execution order on both sides and paired when their
    tensors have the same shapes, or as k split modules against one fused module; a module that fits
    neither is set aside (looking up to 3 modules ahead on each side to resynchronise) and its tensors
    are then paired by shape in order, with the other set-aside tensors."""
    mapping: dict = {}
    i = j = 0
    left_m, left_r = [], []
    while i < len(mine_units) and j < len(ref_units):
        if _pair_within(mine_units[i][1], ref_units[j][1], mapping):
            i, j = i + 1, j + 1
            continue
        k = next((k for k in (3, 2, 4) if i + k <= len(mine_units)
                  and _fused(mine_units[i:i + k], ref_units[j], mapping, True)), 0)
        if k:
            i, j = i + k, j + 1
            continue
        k = next((k for k in (3, 2, 4) if j + k <= len(ref_units)
                  and _fused(ref_units[j:j + k], mine_units[i], mapping, False)), 0)
        if k:
            i, j = i + 1, j + k
            continue
        a, b = _resync(mine_units, ref_units, i, j)
        left_m += mine_units[i:i + a]
        left_r += ref_units[j:j + b]
        i, j = i + a, j + b
    left_m += mine_units[i:]
    left_r += ref_units[j:]
    rest_r: dict[tuple, list[str]] = {}  # what was set aside: by shape, in order
    for _, ts in left_r:
        for full, _, t in ts:
            rest_r.setdefault(_sq(t), []).append(full)
    for _, ts in left_m:
        for full, _, t in ts:
            cands = rest_r.get(_sq(t))
            if cands:
                mapping[full] = cands.pop(0)
    used = {x for v in _refs_of(mapping).values() for x in v}
    um = [f for _, ts in mine_units for f, _, _ in ts if f not in mapping]
    ur = [f for _, ts in ref_units for f, _, _ in ts if f not in used]
    return mapping, um, ur


def _resync(mu, ru, i, j) -> tuple[int, int]:
    """(a, b): skip a MINE and b REF modules (a + b smallest, >= 1) after which shapes match again."""
    def sig(u):
        return sorted(_sq(t) for _, _, t in u[1])
    for total in range(1, 7):
        for a in range(0, min(total, 3) + 1):
            b = total - a
            if b > 3 or i + a >= len(mu) or j + b >= len(ru):
                continue
            if sig(mu[i + a]) == sig(ru[j + b]):
                return a, b
    return 1, 1


def init_differences(mine: nn.Module, ref: nn.Module, mapping: dict, limit: int = 8) -> list[str]:
    """Freshly initialised tensors whose statistics differ (our thresholds: means apart by more than
    0.05 + 0.1 x the larger std, or stds more than 2x apart): an init written differently (e.g. a DyT
    beta of ones, a bias not zeroed), which copying REF's weights would hide."""
    mt = {**dict(mine.named_parameters()), **dict(mine.named_buffers())}
    rt = {**dict(ref.named_parameters()), **dict(ref.named_buffers())}
    out = []
    for m, r in mapping.items():
        if not isinstance(r, str) or not mt[m].is_floating_point():
            continue
        a, b = mt[m].detach().double().flatten(), rt[r].detach().double().flatten()
        ma, mb = a.mean().item(), b.mean().item()
        sa = a.std().item() if a.numel() > 1 else 0.0
        sb = b.std().item() if b.numel() > 1 else 0.0
        far = abs(ma - mb) > 0.05 + 0.1 * max(sa, sb)
        spread = (sa > 1e-6 or sb > 1e-6) and not (0.5 <= (sa + 1e-12) / (sb + 1e-12) <= 2)
        if far or spread:
            out.append(f"{m} mean {ma:.3g} std {sa:.3g} vs REF {r} mean {mb:.3g} std {sb:.3g}")
    return out[:limit]


def perturb(model: nn.Module, seed: int, scale: float = 0.02) -> None:
    """Add N(0, scale^2) noise to every floating parameter (not buffers): zero-initialised biases, layer
    scales and heads then carry signal, so a missing one shows in the forward pass."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g).to(p) * scale)


def copy_weights(mine: nn.Module, ref: nn.Module, mapping: dict) -> None:
    """MINE's tensors := REF's through ``mapping`` (in place, no grad)."""
    mt = {**dict(mine.named_parameters()), **dict(mine.named_buffers())}
    rt = {**dict(ref.named_parameters()), **dict(ref.named_buffers())}
    with torch.no_grad():
        for m, r in mapping.items():
            if m not in mt:
                raise ConfigError(f"--map: MINE has no tensor {m!r}")
            if isinstance(r, str):
                src = rt[r]
            elif len(r) == 3 and isinstance(r[1], int):  # [fused ref name, part index, parts]
                src = rt[r[0]].chunk(r[2], dim=0)[r[1]]
            else:
                src = torch.cat([rt[x] for x in r], dim=0)
            if src.numel() != mt[m].numel() or _sq(src) != _sq(mt[m]):
                raise ConfigError(f"--map: {m} {tuple(mt[m].shape)} cannot take {r} {tuple(src.shape)}")
            mt[m].copy_(src.reshape(mt[m].shape))


# ----------------------------------------------------------------------------- forward / backward

def _refs_of(mapping: dict) -> dict[str, set[str]]:
    """MINE tensor name -> the REF tensor names it stands for."""
    out = {}
    for m, r in mapping.items():
        out[m] = {r} if isinstance(r, str) else ({r[0]} if len(r) == 3 and isinstance(r[1], int) else set(r))
    return out


def pair_modules(mine: nn.Module, ref: nn.Module, mapping: dict) -> dict[str, str]:
    """MINE module -> REF module whose recursive parameters map onto each other exactly (innermost pair
    when wrappers share a parameter set). REF tensors nothing maps to are left out of REF's sets; a MINE
    module holding only some parts of a fused REF tensor (q of qkv) is not paired."""
    refs = _refs_of(mapping)
    matched_ref = {x for v in refs.values() for x in v}
    parts: dict[str, set] = {}
    for m, r in mapping.items():
        if isinstance(r, list) and len(r) == 3 and isinstance(r[1], int):
            parts.setdefault(r[0], set()).add(m)

    def keys(model, translate, is_mine):
        out: dict[frozenset, str] = {}
        for n, m in model.named_modules():
            names = [f"{n}.{k}" if n else k for k, _ in m.named_parameters()]
            if is_mine and any(isinstance(mapping.get(x), list) and len(mapping[x]) == 3
                               and not parts[mapping[x][0]] <= set(names) for x in names):
                continue
            key = frozenset(x for k in names for x in translate(k))
            if key and (key not in out or out[key].count(".") < n.count(".")):
                out[key] = n  # the innermost module with this parameter set
        return out

    km = keys(mine, lambda k: refs.get(k, {f"<unmatched {k}>"}), True)
    kr = keys(ref, lambda k: {k} if k in matched_ref else set(), False)
    return {km[k]: kr[k] for k in km if k in kr}


def _record(model: nn.Module, names: set[str]):
    """Hooks recording, for the named modules: start index, end index, first input and output."""
    rec: dict[str, dict] = {}
    clock = [0]
    mods = {m: n for n, m in model.named_modules() if n in names}

    def pre(mod, args):
        clock[0] += 1
        rec.setdefault(mods[mod], {"start": clock[0], "input": first_tensor(args)})

    def post(mod, args, out):
        clock[0] += 1
        r = rec[mods[mod]]
        if "end" not in r:
            r["end"], r["output"] = clock[0], first_tensor(out)
    hooks = [m.register_forward_pre_hook(pre) for m in mods] + [m.register_forward_hook(post) for m in mods]
    return rec, hooks


def _forward(model, x, names, seed, train_mode):
    model.train(train_mode)
    rec, hooks = _record(model, names)
    try:
        torch.manual_seed(seed)
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, rec


def first_forward_divergence(mine, ref, pairs: dict[str, str], x, atol, rtol, seed=0, train_mode=False):
    """(Divergence or None, output max abs diff) for one forward pass of ``x`` through both."""
    out_m, rm = _forward(mine, x, set(pairs) | {""}, seed, train_mode)
    out_r, rr = _forward(ref, x, set(pairs.values()) | {""}, seed, train_mode)
    ok_out, d_out, _ = _close(out_m, out_r, atol, rtol) if out_m.shape == out_r.shape else (False, float("inf"), 0)
    ran = sorted((p for p in pairs if p in rm and "end" in rm[p] and pairs[p] in rr), key=lambda p: rm[p]["end"])
    last_ok = ""
    for p in ran:
        a, b = rm[p]["output"], rr[pairs[p]]["output"]
        if a is None or b is None:
            continue
        a2 = _as_ref_layout(a, b)
        if a2 is None:
            return Divergence("shape", p, pairs[p], float("inf"), float("inf"),
                              (tuple(a.shape), tuple(b.shape))), d_out
        ok, d, rel = _close(a2, b, atol, rtol)
        if ok:
            last_ok = p
            continue
        ia, ib = rm[p]["input"], rr[pairs[p]]["input"]
        ia2 = _as_ref_layout(ia, ib) if ia is not None and ib is not None else None
        inputs_ok = ia2 is not None and _close(ia2, ib, atol, rtol)[0]
        mods_m, mods_r = dict(mine.named_modules()), dict(ref.named_modules())
        if inputs_ok:
            inner = [c for c in ran if c.startswith(p + ".") and rm[c]["start"] > rm[p]["start"]]
            if not inner:  # a leaf (as far as pairs go): its own computation differs
                return Divergence("module", p, pairs[p], d, rel, (tuple(a.shape),), last_ok,
                                  repr_mine=_describe(mods_m[p]), repr_ref=_describe(mods_r[pairs[p]])), d_out
            # its paired children agreed (they ran before it ended and were checked first): the gap is its own code
            bad_child = next((c for c in inner if not _input_agrees(rm, rr, pairs, c, atol, rtol)), "")
            good = [c for c in inner if rm[c]["end"] < (rm[bad_child]["start"] if bad_child else rm[p]["end"])]
            return Divergence("between", p, pairs[p], d, rel, (tuple(a.shape),), good[-1] if good else "",
                              bad_child, f"{type(mods_m[p]).__name__}.forward ({p})"), d_out
        parent = _gap_owner(p, pairs, rm, rr, atol, rtol)
        return Divergence("between", p, pairs[p], d, rel, (tuple(a.shape),), last_ok, p,
                          f"{type(mods_m[parent]).__name__}.forward ({parent or 'the model'})"), d_out
    if not ok_out:  # every pair agreed: the difference is after the last pair
        return Divergence("between", "", "", d_out, float("nan"), (tuple(out_m.shape),), last_ok, "",
                          f"{type(mine).__name__}.forward (the model)"), d_out
    return None, d_out


def _input_agrees(rm, rr, pairs, c, atol, rtol) -> bool:
    ia, ib = rm[c]["input"], rr[pairs[c]]["input"]
    if ia is None or ib is None:
        return True
    ia2 = _as_ref_layout(ia, ib)
    return ia2 is not None and _close(ia2, ib, atol, rtol)[0]


def _gap_owner(p: str, pairs, rm, rr, atol, rtol) -> str:
    """The innermost paired ancestor of ``p`` whose input still agreed: the difference was made in its own
    forward code, before ``p`` ran (the model itself when no ancestor qualifies)."""
    parts = p.split(".")
    for k in range(len(parts) - 1, 0, -1):
        anc = ".".join(parts[:k])
        if anc in pairs and anc in rm and pairs[anc] in rr and _input_agrees(rm, rr, pairs, anc, atol, rtol):
            return anc
    return ""


def _describe(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})"


def first_backward_divergence(mine, ref, mapping, order: dict[str, int], x, y, atol, rtol, seed=0,
                              train_mode=False):
    """The first MINE parameter, in reverse execution order, whose gradient differs from REF's (through
    the mapping); None when all agree."""
    grads = []
    for model in (mine, ref):
        model.train(train_mode)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        F.cross_entropy(model(x).float(), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    gm, gr = grads
    for n in sorted(gm, key=lambda n: -order.get(n, -1)):  # reverse order of first use
        r = mapping.get(n)
        if r is None:
            continue
        if isinstance(r, str):
            g_ref = gr.get(r)
        elif len(r) == 3 and isinstance(r[1], int):
            g_ref = gr[r[0]].chunk(r[2], dim=0)[r[1]] if r[0] in gr else None
        else:
            g_ref = torch.cat([gr[x] for x in r], 0) if all(x in gr for x in r) else None
        if g_ref is None:
            continue
        ok, d, rel = _close(gm[n], g_ref.reshape(gm[n].shape), atol, rtol)
        if not ok:
            return Divergence("gradient", n, str(r), d, rel, (tuple(gm[n].shape),))
    return None


# ----------------------------------------------------------------------------- the command

def align(mine_spec: str, ref_spec: str, *, img_size: int = 224, num_classes: int = 1000, batch: int = 2,
          seed: int = 0, atol: float | None = None, rtol: float | None = None, train_mode: bool = False,
          map_path: str | None = None, out_dir: str | Path | None = None, float32: bool = False) -> AlignResult:
    """Build both models, match and copy weights REF -> MINE, and find the first divergence.

    Raises:
        ConfigError: a bad spec, a model that rejects the input, or a ``--map`` that does not fit.
    """
    mine, ref = (_build(spec, label, num_classes, img_size, seed) for spec, label in ((mine_spec, "MINE"),
                                                                                   (ref_spec, "REF")))
    dtype = torch.float32 if float32 else torch.float64
    atol = atol if atol is not None else (1e-6 if float32 else 1e-10)
    rtol = rtol if rtol is not None else (1e-5 if float32 else 1e-8)
    if not float32:
        mine, ref = mine.double(), ref.double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=g).to(dtype)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    mine.eval(), ref.eval()
    orders = []
    for spec, model in ((mine_spec, mine), (ref_spec, ref)):
        try:
            orders.append(first_use_order(model, x))
        except Exception as e:
            raise ConfigError(f"{spec}: it rejects a [{batch}, 3, {img_size}, {img_size}] input ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); give --img-size / --num-classes it takes") from e
    tm, tr = _units(mine, orders[0]), _units(ref, orders[1])
    if map_path:
        try:
            mapping = json.loads(Path(map_path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--map {map_path}: cannot read it as JSON ({e})") from e
        used = {x for v in _refs_of(mapping).values() for x in v}
        um = [f for _, ts in tm for f, _, _ in ts if f not in mapping]
        ur = [f for _, ts in tr for f, _, _ in ts if f not in used]
    else:
        mapping, um, ur = match_tensors(tm, tr)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "map.json").write_text(json.dumps(mapping, indent=1))
    init = init_differences(mine, ref, mapping)
    perturb(ref, seed)
    copy_weights(mine, ref, mapping)
    notes = []
    pairs = pair_modules(mine, ref, mapping)
    fwd, d_out = first_forward_divergence(mine, ref, pairs, x, atol, rtol, seed, train_mode)
    bwd = first_backward_divergence(mine, ref, mapping, orders[0], x, y, atol, rtol, seed, train_mode)
    if train_mode:
        notes.append("train mode: the seed is reset before each forward; dropout/drop-path masks match only where "
                     "both models draw them in the same order and shapes")
    return AlignResult(sum(p.numel() for p in mine.parameters()), sum(p.numel() for p in ref.parameters()),
                       mapping, um, ur, len(pairs), fwd, bwd, d_out, notes, init)


def _build(spec: str, label: str, num_classes: int, img_size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return user_model(spec, num_classes, img_size=img_size)()
    except ConfigError as e:  # the spec parser speaks of --model; here it is MINE or REF
        raise ConfigError(str(e).replace("--model ", f"{label} ", 1)) from e


def format_result(r: AlignResult, mine: str, ref: str) -> str:
    lines = [f"MINE {mine}: {r.params_mine:,} parameters", f"REF  {ref}: {r.params_ref:,} parameters",
             f"matched {len(r.mapping)} tensors; {len(r.unmatched_mine)} of MINE and {len(r.unmatched_ref)} of REF "
             f"unmatched; {r.pairs} module pairs compared"]
    fused = {k: v for k, v in r.mapping.items() if isinstance(v, list)}
    if fused:
        lines.append("fused/split: " + ", ".join(f"{k} <- {v[0]}[{v[1]}/{v[2]}]" if len(v) == 3 and isinstance(v[1], int)
                                                  else f"{k} <- cat({', '.join(v)})" for k, v in list(fused.items())[:6]))
    for label, names in (("MINE", r.unmatched_mine), ("REF", r.unmatched_ref)):
        if names:
            lines.append(f"unmatched in {label}: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else ""))
    if r.init:
        lines.append("init differs (before REF's weights were copied): " + "; ".join(r.init[:4])
                     + (" ..." if len(r.init) > 4 else ""))
    lines.append("forward:  " + (r.forward.sentence() if r.forward else
                                 f"every paired module agrees; final outputs max abs diff {r.output_max_abs:.3g}"))
    lines.append("backward: " + (r.backward.sentence() if r.backward else "every matched gradient agrees"))
    lines += [f"note: {n}" for n in r.notes]
    lines.append("verdict: " + ("AGREE" if r.agree else "DIVERGE"))
    return "\n".join(lines)
