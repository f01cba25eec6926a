"""``reproscope align MINE REF``: hold a re-implementation against the reference, layer by layer.

Two models whose modules are named and nested differently are compared the way one would by hand
(same weights, same input, compare every layer's output), automatically:

0. **Pre-flight**: one forward pass of each; both must return [B, num_classes] floating logits (else one
   line, code ``output-width``, exit 2). Tensors kept as plain module attributes (neither parameter nor
   buffer) that the forward pass uses are found (``model.observe_tensors``), cast to float64 with the
   model and matched like parameters, and named (code ``plain-tensor-attribute``): never trained, not
   saved, not moved by ``.to()``.
1. **Modules are matched REF -> MINE by the shapes of the tensors they own**, in *execution* order (the
   order in which their tensors are first used on one forward pass, then definition order within a
   module), so two ``__init__`` methods that define layers in different orders still match. A fused
   tensor on one side (``qkv`` [3C, C]) against consecutive split tensors on the other (``q``, ``k``,
   ``v`` [C, C]) is matched as their concatenation along dim 0. Two modules at the same place whose
   tensors only partly match (a norm without a bias, an alpha of another shape) are still paired.
2. **Tensors within a matched module pair are paired by role**, not by name or declaration order: every
   assignment of same-shape tensors (at most 24 per module) is tried by copying REF's weights into
   MINE and running the module pair alone on the input the REF module received on the forward pass;
   the one assignment under which the module's output agrees is kept (so a DyT whose ``beta`` is the
   scale and ``gamma`` the shift, or whose ``bias`` is declared before ``weight``, pairs correctly).
   When no assignment (or more than one) agrees, the fresh initialisations decide (ones vs zeros, mean
   and std); when they do not either, the pairing is reported as ambiguous (code ``pairing-ambiguous``)
   and those tensors' init statistics are not compared. A role-equivalent tensor of another shape
   (alpha [C] where REF has [1]) is a shape deviation of that tensor (``shape-deviation``; REF's value is
   broadcast into it so the forward comparison goes on). Unmatched tensors are grouped by the smallest
   pair of corresponding modules holding them (``structure-differs``: "REF's norms have a bias, yours
   have none", "``blocks.*.mlp`` differs in structure: yours has ..., REF has ..."). The mapping is
   written as JSON (``--out``) that can be edited and passed back with ``--map``.
3. **Weights** of REF (with small noise added, so zero-initialised biases carry signal) are copied into
   MINE through the mapping (buffers too, e.g. BatchNorm statistics). A paired tensor whose floating
   dtype as built differs from REF's (a float64 position embedding from ``torch.from_numpy``) is a
   deviation (``dtype-differs``): the float64 comparison below would hide it.
4. **Forward**: one seeded batch through both, in eval mode (``train_mode=True`` reseeds before each
   forward so dropout masks match where both draw them in the same order). Modules are paired when
   the tensors under them (recursively) map onto each other exactly; pairs are compared in MINE's
   execution order and the first pair whose output differs is reported: the module itself when its
   inputs agreed (with both ``extra_repr`` when they differ, e.g. a LayerNorm eps), or the gap
   before it ("between X and Y, in Z.forward") when its input already differed, i.e. functional code
   in a parent's ``forward`` that no module owns. A module that changes its input tensor in place
   (clone in a pre-hook, compare after the call) is named (``inplace-input``).
   A gap that MINE modules holding unmatched tensors ran in names them (``Divergence.unpaired``). When
   a structure difference stands before the divergence (its inputs differ from there on), every module
   pair is also run alone, MINE's module on the input its REF counterpart received
   (``compare_alone``, code ``compared-alone``): how many agree, the innermost that differ, and the
   modules whose tensors have no counterpart, which nothing could be compared with.
5. **Backward**, only when the forward agrees (else ``backward-moot``): cross-entropy on fixed labels;
   the first parameter, in reverse execution order, whose gradient differs.
6. **Verdict** (``AlignResult.verdict``; the CLI exits 0 only on AGREE, 1 otherwise): STRUCTURE DIFFERS
   (unmatched tensors, ``structure-differs``, ``shape-deviation``), DIVERGE (outputs or gradients
   differ, or another deviating finding), INIT DIFFERS (the same outputs and gradients once REF's
   weights are copied, but fresh-init statistics differ: a different start), else AGREE; the first
   that applies, the others said after it ("also").

Both models run in float64 by default (``float32=True`` keeps their own dtype): two correct
implementations written differently (fused vs split qkv, another summation order) then differ by
~1e-15, so a real deviation as small as tanh-approximated GELU at small activations (~1e-5) stands
far above the noise. Agreement of two tensors a (MINE) and b (REF): ``max|a - b| <= atol + rtol *
max|b|``, defaults 1e-10 / 1e-8 in float64 and 1e-6 / 1e-5 in float32 (ours: the matching rules,
the 24-assignment bound and the tolerances; nothing here comes from a paper).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from itertools import permutations, product
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from ..model.dtypes import dtype_message
from ..model.layers import first_tensor
from ..model.observe_tensors import (
    forward_watching,
    plain_tensor_attributes,  # noqa: F401  (re-exported for callers of align)
    plain_tensor_candidates,
    tensor_use_order,
    used_plain,
)
from ..model.spec import user_model

MAX_ASSIGNMENTS = 24  # same-shape assignments tried per module pair (ours)
VERDICTS = {"agree": "AGREE", "structure-differs": "STRUCTURE DIFFERS", "diverge": "DIVERGE",
            "init-differs": "INIT DIFFERS"}  # verdict code -> the word printed
STRUCTURE_CODES = ("structure-differs", "shape-deviation")  # findings that make the verdict STRUCTURE DIFFERS


# ----------------------------------------------------------------------------- results

class AlignInputError(ConfigError):
    """A model align cannot compare (exit 2): ``code`` is "rejects-input" or "output-width"."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Finding:
    """One result beside the forward/backward verdicts. ``code``: "structure-differs", "shape-deviation",
    "plain-tensor-attribute", "inplace-input", "pairing-ambiguous", "paired-by-role", "backward-moot",
    "backward-raises", "dtype-differs", "compared-alone"; ``mine`` / ``ref``: the concrete module or tensor names it is about; ``deviation``:
    whether it makes the verdict DIVERGE (False: information)."""

    code: str
    sentence: str
    mine: list[str] = field(default_factory=list)
    ref: list[str] = field(default_factory=list)
    deviation: bool = True


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
    cause: str = ""  # a MINE module that changed its input in place before this point
    unpaired: list[str] = field(default_factory=list)  # MINE modules with unmatched tensors that ran in the gap

    @property
    def code(self) -> str:
        return {"module": "module-differs", "between": "gap-differs", "shape": "output-shape-differs",
                "gradient": "gradient-differs"}[self.kind]

    def sentence(self) -> str:
        d = f"max abs diff {self.max_abs:.3g}, rel {self.max_rel:.3g}"
        if self.kind == "gradient":
            return f"first gradient that differs (reverse execution order): {self.module} <- {self.ref_module} ({d})"
        if self.kind == "shape":
            return f"{self.module} outputs {self.shapes[0]} but REF's {self.ref_module} outputs {self.shapes[1]}"
        if self.kind == "between":
            s = (f"outputs differ between {self.after or '<input>'} (agrees) and {self.before or '<output>'} "
                 f"(its input differs), in {self.where} ({d})")
        else:
            s = f"outputs differ after {self.module} <-> {self.ref_module}, whose inputs agree ({d})"
            if self.repr_mine != self.repr_ref:
                s += f": {self.repr_mine or '-'} vs {self.repr_ref or '-'}"
        if self.unpaired:
            s += (f"; in between ran {', '.join(f'`{u}`' for u in self.unpaired[:3])}"
                  f"{' and more' if len(self.unpaired) > 3 else ''}, whose tensors have no counterpart in REF "
                  f"(see structure-differs)")
        if self.cause:
            s += (f"; {self.cause} changed its input in place before this, so code reading that tensor "
                  f"afterwards (e.g. the residual) sees the changed values")
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
    findings: list[Finding] = field(default_factory=list)
    deviations: dict = field(default_factory=dict)  # MINE tensor -> REF tensor of the same role, another shape
    alone: dict = field(default_factory=dict)  # compare_alone's result, when a structure difference blocked the forward

    @property
    def verdicts(self) -> list[str]:
        """Every verdict code that applies, most basic first (``VERDICTS``): "structure-differs" (unmatched
        tensors, a structure or shape deviation), "diverge" (outputs or gradients differ, or another
        deviating finding), "init-differs" (fresh-init statistics differ: the same function once REF's
        weights are copied, a different start); ["agree"] when none does."""
        out = []
        if self.unmatched_mine or self.unmatched_ref or any(f.code in STRUCTURE_CODES for f in self.findings):
            out.append("structure-differs")
        if self.forward is not None or self.backward is not None or any(
                f.deviation and f.code not in STRUCTURE_CODES for f in self.findings):
            out.append("diverge")
        if self.init:
            out.append("init-differs")
        return out or ["agree"]

    @property
    def verdict(self) -> str:
        """The verdict's code: the first of ``verdicts`` ("agree", "init-differs", "structure-differs" or
        "diverge"); the CLI exits 0 only on "agree"."""
        return self.verdicts[0]

    @property
    def agree(self) -> bool:
        """Weights that match one to one, the same outputs and gradients, no deviating finding and the same
        fresh-init statistics (verdict "agree")."""
        return self.verdict == "agree"

    @property
    def same_function(self) -> bool:
        """The same outputs and gradients once REF's weights are copied, with every tensor matched and no
        deviating finding: what "agree" means apart from the init."""
        return all(v in ("agree", "init-differs") for v in self.verdicts)

    @property
    def codes(self) -> list[str]:
        """Every result's machine-readable code, in report order (findings, init, forward, backward)."""
        out = [f.code for f in self.findings]
        out += ["init-differs"] if self.init else []
        out += ["unmatched"] if self.unmatched_mine or self.unmatched_ref else []
        out += [d.code for d in (self.forward, self.backward) if d is not None]
        return list(dict.fromkeys(out))

    def finding(self, code: str) -> Finding | None:
        """The first finding with ``code``, or None."""
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict:
        """The result as JSON-ready data, with ``codes``, ``verdict`` (its code) and ``verdicts``."""
        d = asdict(self)
        d["codes"] = self.codes
        d["verdict"], d["verdicts"] = self.verdict, self.verdicts
        for k in ("forward", "backward"):
            if d[k] is not None:
                d[k]["code"] = getattr(self, k).code
        return d


# ----------------------------------------------------------------------------- tensors of a model

def _named_tensors(model: nn.Module, plain=()) -> dict[str, torch.Tensor]:
    """Parameters, buffers and the given plain tensor attributes ((module, attr, shape) triples) by full name."""
    mods = dict(model.named_modules())
    out = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for mname, attr, _ in plain:
        out[f"{mname}.{attr}" if mname else attr] = getattr(mods[mname], attr)
    return out


def _float_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """The dtype of each floating parameter and buffer of ``model``, by full name."""
    return {n: t.dtype for n, t in _named_tensors(model).items() if t.is_floating_point()}


def dtype_findings(dt_mine: dict, dt_ref: dict, mapping: dict, fix: str | None = None) -> list[Finding]:
    """One "dtype-differs" finding (a deviation) for the paired tensors whose floating dtype as built
    differs between MINE and REF (``dt_*``: name -> dtype; ``mapping``: MINE name -> REF name, a list of
    REF names, or a fused ``[name, i, n]``); ``fix``: MINE's ``model.dtypes.dtype_message``, appended.
    Empty when every pair agrees. Align compares in float64, which hides such a difference."""
    items = []
    for m, r in mapping.items():
        refs = [r] if isinstance(r, str) else [x for x in r if isinstance(x, str) and x in dt_ref]
        other = next((dt_ref[x] for x in refs if x in dt_ref and m in dt_mine and dt_ref[x] != dt_mine[m]), None)
        if other is not None:
            items.append((m, refs[0], dt_mine[m], other))
    if not items:
        return []
    short = (lambda d: str(d).replace("torch.", ""))
    s = "; ".join(f"`{m}` is {short(a)} where REF's `{r}` is {short(b)}" for m, r, a, b in items[:4])
    s += (" ..." if len(items) > 4 else "") + (" (compared here in float64, which hides it; in training the "
                                              "activations meet both dtypes)")
    if fix:
        s += f": {fix}"
    return [Finding("dtype-differs", s, [m for m, _, _, _ in items], [r for _, r, _, _ in items])]


def _cast_plain(model: nn.Module, plain, dtype: torch.dtype) -> None:
    """Cast floating plain tensor attributes to ``dtype`` (``.double()`` does not reach them)."""
    mods = dict(model.named_modules())
    for mname, attr, _ in plain:
        t = getattr(mods[mname], attr)
        if t.is_floating_point():
            setattr(mods[mname], attr, t.to(dtype))


def first_use_order(model: nn.Module, x: torch.Tensor, named: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Tensor name -> rank of its first use in one forward pass of ``x`` (a torch function mode sees every
    op, so a parameter used in a parent's own forward code, e.g. a layer scale or a position embedding,
    is placed where it is used, not where its module starts). ``named``: the tensors to watch (default:
    parameters and buffers)."""
    named = named if named is not None else {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return tensor_use_order(model, x.clone(), named)


def _units(model: nn.Module, used: dict[str, int], plain=()) -> list[tuple[str, list[tuple[str, str, torch.Tensor]]]]:
    """(module name, [(full name, local name, tensor)]) for every module owning parameters, buffers or used
    plain tensor attributes directly, ordered by the first use of any of its tensors (modules whose
    tensors were never used last, in definition order)."""
    plain_by_mod: dict[str, list[str]] = {}
    for mname, attr, _ in plain:
        plain_by_mod.setdefault(mname, []).append(attr)
    out = []
    for n, m in model.named_modules():
        own = [(k, t) for k, t in m.named_parameters(recurse=False)]
        own += [(k, t) for k, t in m.named_buffers(recurse=False) if t is not None and k != "num_batches_tracked"]
        own += [(a, getattr(m, a)) for a in plain_by_mod.get(n, ())]
        if own:
            out.append((n, [(f"{n}.{k}" if n else k, k, t) for k, t in own]))
    never = len(used) + 1
    return sorted(out, key=lambda u: min(used.get(f, never) for f, _, _ in u[1]))


# ----------------------------------------------------------------------------- matching modules

def _sq(t: torch.Tensor) -> tuple:
    """A tensor's shape without its size-1 dims: a layer scale [C, 1, 1] and [C] are one shape here."""
    return tuple(n for n in t.shape if n != 1)


def _by_name(local: str, cands: list) -> tuple:
    """The candidate (full, local, tensor) whose local name is most like ``local`` (first on ties)."""
    return max(cands, key=lambda r: (difflib.SequenceMatcher(None, local, r[1]).ratio(), -cands.index(r)))


def _pair_within(mu, ru, mapping: dict) -> bool:
    """Pair the tensors of one MINE and one REF module with the same multiset of shapes (size-1 dims
    ignored): by shape, then by name similarity among tensors of one shape (a first guess that
    ``resolve_roles`` checks). False when the shapes differ."""
    if sorted(_sq(t) for _, _, t in mu) != sorted(_sq(t) for _, _, t in ru):
        return False
    left = list(ru)
    for full, local, t in mu:
        best = _by_name(local, [r for r in left if _sq(r[2]) == _sq(t)])
        mapping[full] = best[0]
        left.remove(best)
    return True


def _pair_partial(mu, ru, mapping: dict) -> bool:
    """Pair what has one shape in two modules found at the same place whose shapes only partly match (a
    norm without a bias, an alpha [C] against [1]). False (nothing paired) when they share no shape."""
    left = list(ru)
    paired = False
    for full, local, t in mu:
        cands = [r for r in left if _sq(r[2]) == _sq(t)]
        if cands:
            best = _by_name(local, cands)
            mapping[full] = best[0]
            left.remove(best)
            paired = True
    return paired


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


@dataclass
class Match:
    """What ``match_units`` found: the tensor mapping, the module pairs (MINE unit, REF unit) whose tensors
    were paired within the pair (``partial``: only some of them), and role-equivalent tensors of another
    shape (MINE -> REF)."""

    mapping: dict
    module_pairs: list[tuple[str, str]]
    partial: set[tuple[str, str]]
    deviations: dict


def match_units(mine_units, ref_units) -> Match:
    """Walk modules in execution order on both sides, pairing them when their tensors have the same shapes,
    or as k split modules against one fused module; a module that fits neither is set aside (looking up
    to 3 modules ahead on each side to resynchronise). Modules set aside at the same place on both sides
    are paired partially; what is still left is paired by shape in order, then, within partial pairs,
    one leftover on each side is a shape deviation."""
    mapping: dict = {}
    pairs, partial = [], set()
    i = j = 0
    left_m, left_r = [], []
    while i < len(mine_units) and j < len(ref_units):
        if _pair_within(mine_units[i][1], ref_units[j][1], mapping):
            pairs.append((mine_units[i][0], ref_units[j][0]))
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
        for n in range(a if a == b else 0):  # set aside at the same place: the same module, partly different
            mu, ru = mine_units[i + n], ref_units[j + n]
            if _pair_partial(mu[1], ru[1], mapping):
                pairs.append((mu[0], ru[0]))
                partial.add((mu[0], ru[0]))
        left_m += mine_units[i:i + a]
        left_r += ref_units[j:j + b]
        i, j = i + a, j + b
    left_m += mine_units[i:]
    left_r += ref_units[j:]
    taken = {x for v in _refs_of(mapping).values() for x in v}
    rest_r: dict[tuple, list[str]] = {}  # what was set aside and is still free: by rank and shape, in order
    for _, ts in left_r:  # (across modules a token [1, 1, C] is no norm's bias [C]: the rank counts)
        for full, _, t in ts:
            if full not in taken:
                rest_r.setdefault((t.ndim, _sq(t)), []).append(full)
    for _, ts in left_m:
        for full, _, t in ts:
            cands = rest_r.get((t.ndim, _sq(t)))
            if full not in mapping and cands:
                mapping[full] = cands.pop(0)
    return Match(mapping, pairs, partial, _partial_deviations(mine_units, ref_units, partial, mapping))


def _partial_deviations(mine_units, ref_units, partial, mapping) -> dict:
    """Within partial module pairs, MINE and REF tensors still unpaired, zipped in order when there are as
    many on both sides: one role held by tensors of two shapes."""
    mu, ru = dict(mine_units), dict(ref_units)
    taken = {x for v in _refs_of(mapping).values() for x in v}
    out = {}
    for m, r in partial:
        lm = [f for f, _, _ in mu[m] if f not in mapping]
        lr = [f for f, _, _ in ru[r] if f not in taken]
        if lm and len(lm) == len(lr):
            out.update(zip(lm, lr))
    return out


def match_tensors(mine_units, ref_units):
    """(mapping MINE name -> REF name | [REF fused name, index, parts] | [REF names], unmatched MINE names,
    unmatched REF names): ``match_units`` without the module pairs (shape deviations count as unmatched)."""
    mapping = match_units(mine_units, ref_units).mapping
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


# ----------------------------------------------------------------------------- pairing by role

def init_stats(named: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """{name: (mean, std)} of every floating tensor (std 0 for one element): read at fresh init."""
    out = {}
    for n, t in named.items():
        if t.is_floating_point() and t.numel():
            a = t.detach().double().flatten()
            out[n] = (a.mean().item(), a.std().item() if a.numel() > 1 else 0.0)
    return out


def _init_far(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two fresh-init (mean, std) differ (ours): means apart by more than 0.05 + 0.1 x the larger std, or
    stds more than 2x apart."""
    (ma, sa), (mb, sb) = a, b
    far = abs(ma - mb) > 0.05 + 0.1 * max(sa, sb)
    spread = (sa > 1e-6 or sb > 1e-6) and not (0.5 <= (sa + 1e-12) / (sb + 1e-12) <= 2)
    return far or spread


def _assignments(scope_m, scope_r, sq: dict) -> list[tuple[dict, dict]] | None:
    """Every way to pair the MINE tensors ``scope_m`` with the REF tensors ``scope_r`` of one module pair:
    same-shape tensors in every order (as many pairs as the smaller side has), then one leftover on each
    side, if as many, zipped as a shape deviation. [(same {m: r}, deviation {m: r})]; None when there
    are more than MAX_ASSIGNMENTS."""
    per_class = []
    for s in dict.fromkeys(sq[n] for n in scope_m + scope_r):
        ms = [m for m in scope_m if sq[m] == s]
        rs = [r for r in scope_r if sq[r] == s]
        if len(ms) <= len(rs):
            per_class.append([dict(zip(ms, p)) for p in permutations(rs, len(ms))])
        else:
            per_class.append([dict(zip(p, rs)) for p in permutations(ms, len(rs))])
    if math.prod(len(o) for o in per_class) > MAX_ASSIGNMENTS:
        return None
    out = []
    for combo in product(*per_class):
        same = {k: v for d in combo for k, v in d.items()}
        lm = [m for m in scope_m if m not in same]
        lr = [r for r in scope_r if r not in same.values()]
        out.append((same, dict(zip(lm, lr)) if lm and len(lm) == len(lr) else {}))
    return out


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """dst := src, reshaped (same size) or broadcast (a scalar into a per-channel tensor); False when neither."""
    with torch.no_grad():
        if src.numel() == dst.numel():
            dst.copy_(src.reshape(dst.shape))
            return True
        s = src.reshape(_sq(src)) if _sq(src) else src.reshape(())
        d = dst.reshape(_sq(dst)) if _sq(dst) else dst.reshape(())
        try:
            d.copy_(torch.broadcast_to(s, d.shape))
        except RuntimeError:
            return False
        return True


def _clone(a):
    """Tensors in a (nested) args/kwargs structure cloned, the rest as is."""
    if isinstance(a, torch.Tensor):
        return a.detach().clone()
    if isinstance(a, (list, tuple)):
        return type(a)(_clone(b) for b in a)
    if isinstance(a, dict):
        return {k: _clone(v) for k, v in a.items()}
    return a


def _with_first(args: tuple, x: torch.Tensor) -> tuple:
    """``args`` with its first tensor replaced by ``x``."""
    out = list(args)
    for k, a in enumerate(out):
        if isinstance(a, torch.Tensor):
            out[k] = x
            break
    return tuple(out)


@dataclass
class _RolePair:
    """One module pair whose same-shape tensors could be paired more than one way."""

    mine: str
    ref: str
    scope_m: list[str]
    scope_r: list[str]
    options: list[tuple[dict, dict]] | None  # None: too many to try


class _Roles:
    """The state ``resolve_roles`` works on: both models, their named tensors, calls, tolerances."""

    def __init__(self, mine, ref, mt, rt, calls_m, calls_r, atol, rtol):
        self.mine_mods, self.ref_mods = dict(mine.named_modules()), dict(ref.named_modules())
        self.mt, self.rt, self.calls_m, self.calls_r = mt, rt, calls_m, calls_r
        self.atol, self.rtol = atol, rtol

    def apply(self, same: dict, dev: dict) -> None:
        for m, r in {**same, **dev}.items():
            _copy_into(self.mt[m], self.rt[r])

    def outcome(self, p: _RolePair, same: dict, dev: dict) -> tuple[bool, float] | None:
        """(the MINE module's output agrees with REF's, max abs diff) under this assignment, both run alone
        on the input the REF module received; None when the pair cannot be run alone."""
        cm, cr = self.calls_m.get(p.mine), self.calls_r.get(p.ref)
        if not cm or not cr or cr.get("output") is None:
            return None
        xr, xm = first_tensor(cr["args"]), first_tensor(cm["args"])
        x_in = _as_ref_layout(xr, xm) if xr is not None and xm is not None else None
        if x_in is None and xr is not None:
            return None
        self.apply(same, dev)
        args = _with_first(cm["args"], x_in) if x_in is not None else cm["args"]
        try:
            with torch.no_grad():
                out = first_tensor(self.mine_mods[p.mine](*_clone(args), **_clone(cm["kwargs"])))
        except Exception:  # an assignment the module cannot run with counts as disagreeing
            return False, float("inf")
        ref_out = cr["output"]
        a = _as_ref_layout(out, ref_out) if out is not None else None
        if a is None:
            return False, float("inf")
        ok, d, _ = _close(a, ref_out, self.atol, self.rtol)
        return ok, d


def _role_pairs(match: Match, mine_units, ref_units) -> list[_RolePair]:
    """The module pairs of ``match`` whose tensors can be paired in more than one way, deepest MINE module
    first (so a parent is tried after its children are settled)."""
    mu, ru = dict(mine_units), dict(ref_units)
    refs = _refs_of(match.mapping)
    fused = {x for m, v in refs.items() if not isinstance(match.mapping[m], str) for x in v}
    out = []
    for m, r in match.module_pairs:
        ref_set = {f for f, _, _ in ru[r]}
        inside = {f for f, _, _ in mu[m]}
        outside = {v for k, v in match.mapping.items() if isinstance(v, str) and k not in inside}
        scope_m = [f for f, _, _ in mu[m] if _points_into(match.mapping.get(f, match.deviations.get(f)), ref_set)]
        scope_r = [f for f in ref_set if f not in outside and f not in fused]
        scope_r.sort(key=[f for f, _, _ in ru[r]].index)
        sq = {f: _sq(t) for f, _, t in mu[m] + ru[r]}
        options = _assignments(scope_m, scope_r, sq)
        if options is None or len(options) > 1:
            out.append(_RolePair(m, r, scope_m, scope_r, options))
    return sorted(out, key=lambda p: -(p.mine.count(".") + bool(p.mine)))


def _points_into(target, ref_set: set[str]) -> bool:
    """A MINE tensor's current REF target is nothing yet, or a REF tensor of ``ref_set`` (not a fused part)."""
    return target is None or (isinstance(target, str) and target in ref_set)


def resolve_roles(mine, ref, match: Match, mine_units, ref_units, x, stats_m, stats_r, mt, rt, atol, rtol
                  ) -> tuple[list[Finding], set[str]]:
    """Pair same-shape tensors within each module pair by role (module docstring, step 2), updating
    ``match.mapping`` / ``match.deviations`` and MINE's copied weights in place. Expects REF's weights
    already copied into MINE by the first-guess mapping. Returns (findings "pairing-ambiguous" and
    "paired-by-role", the MINE tensor names whose pairing is ambiguous)."""
    todo = _role_pairs(match, mine_units, ref_units)
    if not todo:
        return [], set()
    calls_m = _record_calls(mine, {p.mine for p in todo}, x)
    calls_r = _record_calls(ref, {p.ref for p in todo}, x)
    roles = _Roles(mine, ref, mt, rt, calls_m, calls_r, atol, rtol)
    ambiguous, moved, findings, undecided = set(), [], [], []
    for p in todo:
        default = ({m: match.mapping[m] for m in p.scope_m if m in match.mapping},
                   {m: match.deviations[m] for m in p.scope_m if m in match.deviations})
        choice, how = _choose(p, default, roles, stats_m, stats_r)
        for m in p.scope_m:
            match.mapping.pop(m, None)
            match.deviations.pop(m, None)
        match.mapping.update(choice[0])
        match.deviations.update(choice[1])
        roles.apply(*choice)
        if how == "ambiguous":
            ambiguous.update(_contested(p)[0])
            undecided.append(p)
        elif choice[0] != default[0]:
            moved += [(m, r) for m, r in choice[0].items()
                      if default[0].get(m) != r and m.rsplit(".", 1)[-1] != r.rsplit(".", 1)[-1]]
    findings += _ambiguous_findings(undecided, roles)
    if moved:
        shown = ", ".join(f"{m} <- REF {r}" for m, r in moved[:4])
        shown += f" (and {len(moved) - 4} more)" if len(moved) > 4 else ""
        findings.append(Finding("paired-by-role", f"same-shape tensors paired by role, not by name or declaration "
                                f"order: {shown}", [m for m, _ in moved], [r for _, r in moved], deviation=False))
    return findings, ambiguous


def _choose(p: _RolePair, default, roles: _Roles, stats_m, stats_r) -> tuple[tuple[dict, dict], str]:
    """(assignment, how): the one assignment under which the module's output agrees ("output"), else the
    one under which every pair's fresh init agrees ("init"), else the first guess ("ambiguous")."""
    if p.options is None:
        return default, "ambiguous"
    results = [roles.outcome(p, *o) for o in p.options]
    agreeing = [o for o, r in zip(p.options, results) if r and r[0]]
    if len(agreeing) == 1:
        return agreeing[0], "output"
    pool = agreeing or p.options
    by_init = [o for o in pool if all(m in stats_m and r in stats_r and not _init_far(stats_m[m], stats_r[r])
                                      for m, r in {**o[0], **o[1]}.items())]
    if len(by_init) == 1:
        return by_init[0], "init"
    return (default if default in pool else pool[0]), "ambiguous"


def _ambiguous_findings(pairs: list[_RolePair], roles: _Roles) -> list[Finding]:
    """One "pairing-ambiguous" finding per kind of module pair (MINE class, REF class, tensor names): the
    tensors of a shape held by more than one tensor, which the pairing could not tell apart."""
    groups: dict[tuple, list[_RolePair]] = {}
    for p in pairs:
        names_m, names_r = ([n.rsplit(".", 1)[-1] for n in side] for side in _contested(p))
        key = (type(roles.mine_mods[p.mine]).__name__, type(roles.ref_mods[p.ref]).__name__, tuple(names_m),
               tuple(names_r), p.options is None)
        groups.setdefault(key, []).append(p)
    out = []
    for (cls_m, cls_r, names_m, names_r, too_many), ps in groups.items():
        why = (f"more than {MAX_ASSIGNMENTS} ways to pair them" if too_many else "no single assignment makes the "
               "module's output agree, and their initial values do not tell them apart")
        where = ", ".join(f"`{x}`" for x in dict.fromkeys(_pat(p.mine) for p in ps))
        out.append(Finding("pairing-ambiguous",
                           f"which of your {cls_m}'s {', '.join(f'`{n}`' for n in names_m)} plays which of REF's "
                           f"{cls_r}'s {', '.join(f'`{n}`' for n in names_r)} is ambiguous in {len(ps)} module(s) "
                           f"({where}): {why}; their init statistics are not compared",
                           [p.mine for p in ps], [p.ref for p in ps], deviation=False))
    return out


def _contested(p: _RolePair) -> tuple[list[str], list[str]]:
    """(MINE tensors, REF tensors) of a module pair that the assignments pair differently (all of the
    pair's when there were too many assignments to list)."""
    if p.options is None:
        return p.scope_m, p.scope_r
    targets = {m: {(o[0].get(m), o[1].get(m)) for o in p.options} for m in p.scope_m}
    mine = [m for m in p.scope_m if len(targets[m]) > 1]
    refs = {r for m in mine for pair in targets[m] for r in pair if r is not None}
    return mine, [r for r in p.scope_r if r in refs]


def init_differences(stats_m: dict, stats_r: dict, mapping: dict, skip=(), limit: int = 8) -> list[str]:
    """Freshly initialised tensors whose statistics differ (``_init_far``): an init written differently
    (e.g. a DyT beta of ones, a bias not zeroed), which copying REF's weights would hide. ``stats_*``:
    ``init_stats`` of each model at fresh init; ``skip``: MINE tensors whose pairing is ambiguous."""
    out = []
    for m, r in mapping.items():
        if not isinstance(r, str) or m in skip or m not in stats_m or r not in stats_r:
            continue
        if _init_far(stats_m[m], stats_r[r]):
            (ma, sa), (mb, sb) = stats_m[m], stats_r[r]
            out.append(f"{m} mean {ma:.3g} std {sa:.3g} vs REF {r} mean {mb:.3g} std {sb:.3g}")
    return out[:limit]


# ----------------------------------------------------------------------------- structure report

def _pat(name: str) -> str:
    """A module or tensor name with its indices as ``*`` (``blocks.3.mlp`` -> ``blocks.*.mlp``)."""
    return re.sub(r"(?<![^.])\d+(?![^.])", "*", name)


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _within(name: str, module: str) -> bool:
    """``name`` is ``module`` or under it (everything is under the root "")."""
    return module == "" or name == module or name.startswith(module + ".")


def _lca(names) -> str:
    """The innermost module that holds every module in ``names``."""
    parts = [n.split(".") if n else [] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


class _Correspondence:
    """Which module on the other side corresponds to a module, read from the matched tensors under it."""

    def __init__(self, mapping: dict, deviations: dict):
        self.m2r: dict[str, set[str]] = {**_refs_of(mapping), **{m: {r} for m, r in deviations.items()}}
        self.r2m: dict[str, set[str]] = {}
        for m, rs in self.m2r.items():
            for r in rs:
                self.r2m.setdefault(r, set()).add(m)
        self.cache: dict = {}
        self.owners_m = {_owner(t) for t in self.m2r}  # modules holding a matched tensor
        self.owners_r = {_owner(t) for t in self.r2m}

    def other(self, module: str, mine_side: bool) -> str | None:
        """The innermost module on the other side holding every counterpart of the tensors under ``module``
        (None when none of them is matched)."""
        key = (module, mine_side)
        if key not in self.cache:
            table = self.m2r if mine_side else self.r2m
            owners = [_owner(o) for t, os in table.items() if _within(t, module) for o in os]
            self.cache[key] = _lca(owners) if owners else None
        return self.cache[key]

    def region(self, tensor: str, mine_side: bool) -> tuple[str, str]:
        """(MINE module, REF module): the innermost ancestor of ``tensor``'s module whose counterpart
        corresponds back to it (the two roots at worst)."""
        mod = _owner(tensor)
        while True:
            c = self.other(mod, mine_side)
            if c is not None and self.other(c, not mine_side) == mod:
                return (mod, c) if mine_side else (c, mod)
            if mod == "":
                return "", ""
            mod = _owner(mod)


def _regions(corr: _Correspondence, um, ur) -> dict[tuple[str, str], dict[str, list[str]]]:
    """Unmatched tensors grouped by region (MINE module, REF module); a region nested in another on both
    sides is merged into it (not into the two roots: what the models hold directly stays apart)."""
    raw: dict[tuple[str, str], dict[str, list[str]]] = {}
    for side, names in (("mine", um), ("ref", ur)):
        for t in names:
            raw.setdefault(corr.region(t, side == "mine"), {"mine": [], "ref": []})[side].append(t)
    kept: dict[tuple[str, str], dict[str, list[str]]] = {}
    for key in sorted(raw, key=lambda k: (k[0].count(".") + bool(k[0]), k[1].count(".") + bool(k[1]))):
        outer = next((k for k in kept if k != ("", "") and _within(key[0], k[0]) and _within(key[1], k[1])), None)
        if outer is None:
            kept[key] = raw[key]
        else:
            for side in ("mine", "ref"):
                kept[outer][side] += raw[key][side]
    return kept


def _rel(name: str, module: str) -> str:
    return name[len(module) + 1:] if module else name


def _shape_text(shapes) -> str:
    return "/".join(str(list(s)) for s in dict.fromkeys(tuple(s) for s in shapes))


def _summary(model: nn.Module, module: str, tensors: dict[str, torch.Tensor]) -> str:
    """What a subtree holds, by class: "2 Rational (num [8, 6], den [8, 4]) and 1 Linear (96->96)"."""
    groups: dict[str, list[str]] = {}
    for n, m in model.named_modules():
        if not _within(n, module):
            continue
        own = [(k, tensors[f"{n}.{k}" if n else k]) for k in _own_names(m) if (f"{n}.{k}" if n else k) in tensors]
        if not own:
            continue
        if isinstance(m, nn.Linear):
            desc = f"{m.in_features}->{m.out_features}"
        elif isinstance(m, nn.Conv2d):
            desc = f"{m.in_channels}->{m.out_channels}, {m.kernel_size[0]}x{m.kernel_size[1]}"
        else:
            desc = ", ".join(f"{k} {list(t.shape)}" for k, t in own)
        groups.setdefault(type(m).__name__, []).append(desc)
    parts = [f"{len(v)} {cls} ({'; '.join(dict.fromkeys(v))})" for cls, v in groups.items()]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "nothing"


def _own_names(m: nn.Module) -> list[str]:
    return [k for k, _ in m.named_parameters(recurse=False)] + \
           [k for k, t in m.named_buffers(recurse=False) if t is not None and k != "num_batches_tracked"] + \
           [k for k, v in vars(m).items() if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
            and k not in m._buffers and k not in m._parameters]


def _noun(cls: str, pats: list[str]) -> str:
    """How to call a group of modules: "norms" when they are, else "`Class` modules"."""
    if any(w in cls.lower() for w in ("norm", "dyt")) or all("norm" in p.rsplit(".", 1)[-1].lower() for p in pats):
        return "norms"
    return f"`{cls}` modules"


def structure_findings(mine: nn.Module, ref: nn.Module, mt: dict, rt: dict, mapping: dict, deviations: dict,
                       um: list[str], ur: list[str]) -> list[Finding]:
    """Unmatched tensors said where they concentrate: per region (see ``_Correspondence.region``), grouped
    over repeats (``blocks.*``): "structure-differs" (one side has tensors the other lacks, or both have
    their own) and "shape-deviation" (one tensor each side, owned by the pair itself). Shape deviations
    found by role (``deviations``) are reported here too."""
    corr = _Correspondence(mapping, deviations)
    mods_m, mods_r = dict(mine.named_modules()), dict(ref.named_modules())
    groups: dict[tuple, list] = {}
    for (a, c), got in _regions(corr, um, ur).items():
        lm, lr = got["mine"], got["ref"]
        if len(lm) == 1 and len(lr) == 1 and _owner(lm[0]) == a and _owner(lr[0]) == c:
            deviations = {**deviations, lm[0]: lr[0]}
            continue
        partly = all(_owner(t) in corr.owners_r for t in lr) and all(_owner(t) in corr.owners_m for t in lm)
        kind = "missing" if not lm and partly else "extra" if not lr and partly else "differs"
        key = (kind, _pat(a), _pat(c), tuple(sorted({_rel(t, a) for t in lm})), tuple(sorted({_rel(t, c) for t in lr})))
        groups.setdefault(key, []).append((a, c, lm, lr))
    out = [_deviation_finding(d, mt, rt) for d in _group_deviations(deviations, mt, rt)]
    merged: dict[tuple, list] = {}  # "missing"/"extra": one finding across module kinds (every norm)
    for key, items in groups.items():
        kind, _, _, rel_m, rel_r = key
        if kind == "differs":
            out.append(_differs_finding(items, mine, ref, mt, rt))
        else:
            a, c = items[0][0], items[0][1]
            key = (kind, type(mods_m[a]).__name__, type(mods_r[c]).__name__, rel_m, rel_r)
            merged.setdefault(key, []).extend(items)
    for (kind, cls_m, cls_r, rel_m, rel_r), items in merged.items():
        out.append(_missing_finding(kind, cls_m, cls_r, rel_m or rel_r, items, mt if kind == "extra" else rt))
    return out


def _group_deviations(deviations: dict, mt: dict, rt: dict) -> list[list[tuple[str, str]]]:
    """Shape deviations grouped by (local names, shapes): every norm's alpha is one group."""
    groups: dict[tuple, list] = {}
    for m, r in deviations.items():
        key = (m.rsplit(".", 1)[-1], r.rsplit(".", 1)[-1], tuple(mt[m].shape), tuple(rt[r].shape))
        groups.setdefault(key, []).append((m, r))
    return list(groups.values())


def _deviation_finding(items: list[tuple[str, str]], mt: dict, rt: dict) -> Finding:
    m, r = items[0]
    a, b = tuple(mt[m].shape), tuple(rt[r].shape)
    if rt[r].numel() == 1 and mt[m].numel() > 1:
        what = "per-channel where REF has a scalar"
    elif mt[m].numel() == 1 and rt[r].numel() > 1:
        what = "a scalar where REF has one per channel"
    else:
        what = "another shape for the same role"
    pats = ", ".join(f"`{p}`" for p in dict.fromkeys(_pat(x) for x, _ in items))
    more = f" ({len(items)} tensors: {pats})" if len(items) > 1 else ""
    return Finding("shape-deviation", f"`{m}` is {list(a)} where REF's `{r}` is {list(b)}: {what}{more}",
                   [x for x, _ in items], [y for _, y in items])


def _missing_finding(kind: str, cls_m: str, cls_r: str, rel: tuple, items, tensors: dict) -> Finding:
    """"REF's norms (...) have a `bias` [96]; yours (MyDyT) have none" (or the other way round)."""
    pats_m = list(dict.fromkeys(_pat(a) for a, _, _, _ in items))
    pats_r = list(dict.fromkeys(_pat(c) for _, c, _, _ in items))
    names = [t for _, _, lm, lr in items for t in (lm if kind == "extra" else lr)]
    what = ", ".join(f"`{k}` {_shape_text(tensors[t].shape for t in names if t.endswith('.' + k) or t == k)}"
                     for k in rel)
    article = "a " if len(rel) == 1 else ""
    where_m = ", ".join(f"`{p}`" if p else "the model" for p in pats_m)
    where_r = ", ".join(f"`{p}`" if p else "the model" for p in pats_r)
    if pats_m == [""] and pats_r == [""]:  # the models themselves
        s = (f"REF's model has {what}; yours has none" if kind == "missing" else
             f"your model has {what}; REF's has none")
    elif kind == "missing":
        s = f"REF's {_noun(cls_r, pats_r)} ({where_r}) have {article}{what}; yours ({cls_m}: {where_m}) have none"
    else:
        s = f"your {_noun(cls_m, pats_m)} ({where_m}) have {article}{what}; REF's ({cls_r}: {where_r}) have none"
    return Finding("structure-differs", s, [a for a, _, _, _ in items], [c for _, c, _, _ in items])


def _differs_finding(items, mine, ref, mt, rt) -> Finding:
    """"`blocks.*.mlp` differs in structure per block (4 blocks): yours has ...; REF's `blocks.*.mlp` has ...";
    for the two roots, what is unmatched there is listed instead of the whole models."""
    a, c = items[0][0], items[0][1]
    if not a and not c:
        lm, lr = ([_pat(t) for t in dict.fromkeys(x for it in items for x in it[k])] for k in (2, 3))
        s = (f"the models differ in structure: yours has {_listing(lm, mt, items, 2)} that REF lacks, REF has "
             f"{_listing(lr, rt, items, 3)} that yours lacks")
        return Finding("structure-differs", s, [""], [""])
    per = f" per block ({len(items)} blocks)" if len(items) > 1 else ""
    s = (f"`{_pat(a)}` differs in structure{per}: yours has {_summary(mine, a, mt)}; REF's `{_pat(c)}` has "
         f"{_summary(ref, c, rt)}")
    return Finding("structure-differs", s, [x for x, _, _, _ in items], [y for _, y, _, _ in items])


def _listing(pats: list[str], tensors: dict, items, k: int, limit: int = 6) -> str:
    """Unmatched tensor names (indices as *) with their shapes, for the roots' "differs in structure"."""
    if not pats:
        return "nothing"
    first = {_pat(t): t for it in items for t in it[k]}
    shown = [f"`{p}` {list(tensors[first[p]].shape)}" for p in dict.fromkeys(pats)]
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def plain_tensor_findings(mine: nn.Module, plain, mapping: dict, ref_params: set[str]) -> list[Finding]:
    """One "plain-tensor-attribute" finding per MINE module class keeping used floating tensors as plain
    attributes (integer ones are index tables, not weights): never trained, not saved, not moved to the
    device. A deviation when REF holds the same tensor as a parameter (or nothing matches it)."""
    mods = dict(mine.named_modules())
    by_cls: dict[str, list[tuple[str, str, tuple]]] = {}
    for mname, attr, shape in plain:
        if not getattr(mods[mname], attr).is_floating_point():
            continue
        by_cls.setdefault(type(mods[mname]).__name__, []).append((mname, attr, shape))
    out = []
    for cls, items in by_cls.items():
        names = [f"{m}.{a}" if m else a for m, a, _ in items]
        attrs = list(dict.fromkeys(a for _, a, _ in items))
        where = list(dict.fromkeys(_pat(m) for m, _, _ in items))
        trained_in_ref = [n for n in names if not isinstance(mapping.get(n), str) or mapping[n] in ref_params]
        s = (f"{cls} keeps {', '.join(f'`{a}`' for a in attrs)} as plain tensor attributes (neither nn.Parameter "
             f"nor buffer) in {len(set(m for m, _, _ in items))} module(s) ({', '.join(f'`{p}`' for p in where)}), "
             f"and forward uses them: they are never trained (not in parameters()), not saved (not in "
             f"state_dict) and not moved by .to(device)" + ("; REF trains them" if trained_in_ref else ""))
        out.append(Finding("plain-tensor-attribute", s, names,
                           [mapping[n] for n in names if isinstance(mapping.get(n), str)], bool(trained_in_ref)))
    return out


# ----------------------------------------------------------------------------- weights

def perturb(model: nn.Module, seed: int, scale: float = 0.02) -> None:
    """Add N(0, scale^2) noise to every floating parameter (not buffers): zero-initialised biases, layer
    scales and heads then carry signal, so a missing one shows in the forward pass."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g).to(p) * scale)


def copy_weights(mine: nn.Module, ref: nn.Module, mapping: dict, mt: dict | None = None,
                 rt: dict | None = None) -> None:
    """MINE's tensors := REF's through ``mapping`` (in place, no grad). ``mt`` / ``rt``: the named tensors
    to use (default: parameters and buffers)."""
    mt = mt if mt is not None else _named_tensors(mine)
    rt = rt if rt is not None else _named_tensors(ref)
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


def pair_modules(mine: nn.Module, ref: nn.Module, mapping: dict, plain_mine=(), plain_ref=()) -> dict[str, str]:
    """MINE module -> REF module whose recursive parameters (and used plain tensor attributes, given as
    (module, attr, shape)) map onto each other exactly (innermost pair when wrappers share a parameter
    set). REF tensors nothing maps to are left out of REF's sets; a MINE module holding only some parts
    of a fused REF tensor (q of qkv) is not paired."""
    refs = _refs_of(mapping)
    matched_ref = {x for v in refs.values() for x in v}
    parts: dict[str, set] = {}
    for m, r in mapping.items():
        if isinstance(r, list) and len(r) == 3 and isinstance(r[1], int):
            parts.setdefault(r[0], set()).add(m)

    def keys(model, plain, translate, is_mine):
        extra = [f"{m}.{a}" if m else a for m, a, _ in plain]
        out: dict[frozenset, str] = {}
        for n, m in model.named_modules():
            names = [f"{n}.{k}" if n else k for k, _ in m.named_parameters()]
            names += [t for t in extra if _within(_owner(t), n)]
            if is_mine and any(isinstance(mapping.get(x), list) and len(mapping[x]) == 3
                               and not parts[mapping[x][0]] <= set(names) for x in names):
                continue
            key = frozenset(x for k in names for x in translate(k))
            if key and (key not in out or out[key].count(".") < n.count(".")):
                out[key] = n  # the innermost module with this parameter set
        return out

    km = keys(mine, plain_mine, lambda k: refs.get(k, {f"<unmatched {k}>"}), True)
    kr = keys(ref, plain_ref, lambda k: {k} if k in matched_ref else set(), False)
    return {km[k]: kr[k] for k in km if k in kr}


def _record(model: nn.Module, names: set[str], keep_args: bool = False):
    """Hooks recording, for the named modules' first call: start and end index, a clone of the first input
    (as received) and of the first output, and ``inplace``: the largest change the call made to its own
    input tensor (0 when none). ``keep_args``: also clones of all args and kwargs."""
    rec: dict[str, dict] = {}
    clock = [0]
    mods = {m: n for n, m in model.named_modules() if n in names}

    def pre(mod, args, kwargs):
        clock[0] += 1
        name = mods[mod]
        if name in rec:
            return
        x = first_tensor(args)
        rec[name] = {"start": clock[0], "input": None if x is None else x.detach().clone(), "_obj": x}
        if keep_args:
            rec[name]["args"], rec[name]["kwargs"] = _clone(args), _clone(kwargs)

    def post(mod, args, kwargs, out):
        clock[0] += 1
        r = rec[mods[mod]]
        if "end" in r:
            return
        o = first_tensor(out)
        r["end"], r["output"] = clock[0], None if o is None else o.detach().clone()
        obj, before = r.pop("_obj"), r["input"]
        r["inplace"] = 0.0
        if obj is not None and obj.shape == before.shape and not torch.equal(obj.detach(), before):
            r["inplace"] = float((obj.detach().double() - before.double()).abs().nan_to_num(float("inf")).max())
    hooks = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in mods]
    hooks += [m.register_forward_hook(post, with_kwargs=True) for m in mods]
    return rec, hooks


def _forward(model, x, names, seed, train_mode, keep_args=False):
    model.train(train_mode)
    rec, hooks = _record(model, names, keep_args)
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model(x.clone())
    finally:
        for h in hooks:
            h.remove()
    return out, rec


def _record_calls(model: nn.Module, names: set[str], x: torch.Tensor) -> dict[str, dict]:
    """{module name: {"args", "kwargs", "input", "output", ...}} of each named module's first call on one
    eval-mode forward pass of ``x`` (clones, as received and as returned)."""
    return _forward(model, x, names, 0, False, keep_args=True)[1]


def first_forward_divergence(mine, ref, pairs: dict[str, str], x, atol, rtol, seed=0, train_mode=False,
                             holders=()):
    """(Divergence or None, output max abs diff, [(MINE module, max change)] of paired MINE modules that
    changed their input in place where REF's did not) for one forward pass of ``x`` through both.
    ``holders``: MINE modules holding unmatched tensors; those that ran inside a gap divergence are
    named in it (``Divergence.unpaired``)."""
    out_m, rm = _forward(mine, x, set(pairs) | {""} | set(holders), seed, train_mode)
    out_r, rr = _forward(ref, x, set(pairs.values()) | {""}, seed, train_mode)
    inplace = [(p, rm[p]["inplace"]) for p in pairs if p and rm.get(p, {}).get("inplace")
               and not rr.get(pairs[p], {}).get("inplace")]
    inplace = [(p, c) for p, c in inplace if not any(q.startswith(p + ".") for q, _ in inplace)]  # innermost
    inplace.sort(key=lambda t: rm[t[0]]["start"])
    ok_out, d_out, _ = _close(out_m, out_r, atol, rtol) if out_m.shape == out_r.shape else (False, float("inf"), 0)
    div = _locate(mine, ref, pairs, rm, rr, out_m, ok_out, d_out, atol, rtol)
    if div is not None and div.kind == "between":
        point = rm[div.before]["start"] if div.before else float("inf")
        div.cause = next((p for p, _ in inplace if rm[p]["end"] <= point), "")
        since = rm[div.after]["end"] if div.after in rm and "end" in rm[div.after] else 0
        div.unpaired = sorted((h for h in holders if h in rm and "end" in rm[h] and since < rm[h]["start"]
                               and rm[h]["end"] <= point), key=lambda h: rm[h]["start"])
    return div, d_out, inplace


def _locate(mine, ref, pairs, rm, rr, out_m, ok_out, d_out, atol, rtol) -> Divergence | None:
    """The first pair (MINE execution order) whose output differs, said as a module or a gap."""
    ran = sorted((p for p in pairs if p in rm and "end" in rm[p] and pairs[p] in rr), key=lambda p: rm[p]["end"])
    last_ok = ""
    for p in ran:
        a, b = rm[p]["output"], rr[pairs[p]]["output"]
        if a is None or b is None:
            continue
        a2 = _as_ref_layout(a, b)
        if a2 is None:
            return Divergence("shape", p, pairs[p], float("inf"), float("inf"), (tuple(a.shape), tuple(b.shape)))
        ok, d, rel = _close(a2, b, atol, rtol)
        if ok:
            last_ok = p
            continue
        mods_m, mods_r = dict(mine.named_modules()), dict(ref.named_modules())
        if _input_agrees(rm, rr, pairs, p, atol, rtol):
            inner = [c for c in ran if c.startswith(p + ".") and rm[c]["start"] > rm[p]["start"]]
            if not inner:  # a leaf (as far as pairs go): its own computation differs
                return Divergence("module", p, pairs[p], d, rel, (tuple(a.shape),), last_ok,
                                  repr_mine=_describe(mods_m[p]), repr_ref=_describe(mods_r[pairs[p]]))
            # its paired children agreed (they ran before it ended and were checked first): the gap is its own code
            bad_child = next((c for c in inner if not _input_agrees(rm, rr, pairs, c, atol, rtol)), "")
            good = [c for c in inner if rm[c]["end"] < (rm[bad_child]["start"] if bad_child else rm[p]["end"])]
            return Divergence("between", p, pairs[p], d, rel, (tuple(a.shape),), good[-1] if good else "",
                              bad_child, f"{type(mods_m[p]).__name__}.forward ({p})")
        parent = _gap_owner(p, pairs, rm, rr, atol, rtol)
        return Divergence("between", p, pairs[p], d, rel, (tuple(a.shape),), last_ok, p,
                          f"{type(mods_m[parent]).__name__}.forward ({parent or 'the model'})")
    if not ok_out:  # every pair agreed: the difference is after the last pair
        return Divergence("between", "", "", d_out, float("nan"), (tuple(out_m.shape),), last_ok, "",
                          f"{type(mine).__name__}.forward (the model)")
    return None


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


def _holders(names: list[str]) -> list[str]:
    """The modules that own the given tensors (their names without the last part), in first-seen order."""
    return list(dict.fromkeys(_owner(n) for n in names))


def _tensors_in(a) -> int:
    """How many tensors a (nested) args/kwargs structure holds."""
    if isinstance(a, torch.Tensor):
        return 1
    if isinstance(a, (list, tuple)):
        return sum(_tensors_in(b) for b in a)
    if isinstance(a, dict):
        return sum(_tensors_in(b) for b in a.values())
    return 0


def compare_alone(mine, ref, pairs: dict[str, str], x, atol, rtol, seed=0, train_mode=False, holders_mine=(),
                  holders_ref=()) -> dict:
    """Every module pair run alone: MINE's module on the input its REF counterpart received on one forward
    pass of ``x`` (in MINE's layout), its output compared with REF's. What a structure difference upstream
    hides from the forward comparison, whose inputs differ from there on. Pairs whose module takes more
    than one tensor (the others would be MINE's own, already different) are not run. Returns {"agree":
    MINE modules, "differ": [{"mine", "ref", "max_abs"}] (innermost: a pair whose paired children differ
    alone is left to them), "not_run": MINE modules, "no_counterpart_mine" / "no_counterpart_ref": the
    modules holding unmatched tensors, which nothing could be compared with}."""
    _, rm = _forward(mine, x, set(pairs), seed, train_mode, keep_args=True)
    _, rr = _forward(ref, x, set(pairs.values()), seed, train_mode)
    mods = dict(mine.named_modules())
    agree, differ, not_run = [], {}, []
    for p in sorted((p for p in pairs if p and p in rm and pairs[p] in rr), key=lambda p: rm[p]["start"]):
        cm, cr = rm[p], rr[pairs[p]]
        xr, xm = cr["input"], first_tensor(cm["args"])
        x_in = _as_ref_layout(xr, xm) if xr is not None and xm is not None else None
        if x_in is None or cr.get("output") is None or _tensors_in((cm["args"], cm["kwargs"])) != 1:
            not_run.append(p)
            continue
        try:
            with torch.no_grad():
                torch.manual_seed(seed)
                out = first_tensor(mods[p](*_with_first(_clone(cm["args"]), x_in.clone()), **_clone(cm["kwargs"])))
        except Exception:
            not_run.append(p)
            continue
        a = _as_ref_layout(out, cr["output"]) if out is not None else None
        ok, d, _ = _close(a, cr["output"], atol, rtol) if a is not None else (False, float("inf"), 0.0)
        if ok:
            agree.append(p)
        else:
            differ[p] = {"mine": p, "ref": pairs[p], "max_abs": d}
    inner = [v for p, v in differ.items() if not any(q.startswith(p + ".") for q in differ)]
    return {"agree": agree, "differ": inner, "not_run": not_run, "no_counterpart_mine": list(holders_mine),
            "no_counterpart_ref": list(holders_ref)}


def alone_finding(alone: dict) -> Finding:
    """The "compared-alone" finding: how many pairs agree when each runs alone on REF's input, the
    innermost that differ, and what could not be compared (modules named with indices as ``*``)."""
    def pats(names, limit=4):
        ps = list(dict.fromkeys(f"`{_pat(n) or '<model>'}`" for n in names))
        return ", ".join(ps[:limit]) + (f" and {len(ps) - limit} more" if len(ps) > limit else "") if ps else "none"
    n_agree, differ = len(alone["agree"]), alone["differ"]
    total = n_agree + len(differ)
    s = (f"each paired module run alone on the input its REF counterpart received (a structure difference "
         f"makes the inputs differ from there on): {n_agree} of {total} agree")
    if differ:
        groups: dict[tuple[str, str], float] = {}
        for d in differ:
            key = (_pat(d["mine"]), _pat(d["ref"]))
            groups[key] = max(groups.get(key, 0.0), d["max_abs"])
        s += f"; {len(differ)} differ alone: " + ", ".join(
            f"`{m}` <-> `{r}` (max abs diff {v:.3g})" for (m, r), v in list(groups.items())[:4]) + (
            " ..." if len(groups) > 4 else "")
    s += (f"; not compared (their tensors have no counterpart): yours {pats(alone['no_counterpart_mine'])}, "
          f"REF's {pats(alone['no_counterpart_ref'])}")
    if alone["not_run"]:
        s += f"; not run alone (more than one input tensor): {pats(alone['not_run'])}"
    return Finding("compared-alone", s, [d["mine"] for d in differ], [d["ref"] for d in differ],
                   deviation=bool(differ))


def inplace_findings(mine: nn.Module, inplace: list[tuple[str, float]], harmful: bool) -> list[Finding]:
    """One "inplace-input" finding for the MINE modules that changed their input tensor in place (first
    named, the rest counted); a deviation when the forward pass then differs."""
    if not inplace:
        return []
    mods = dict(mine.named_modules())
    first, change = inplace[0]
    more = (f"; also {len(inplace) - 1} more ({', '.join(dict.fromkeys(f'`{_pat(p)}`' for p, _ in inplace[1:]))})"
            if len(inplace) > 1 else "")
    s = (f"`{first}` ({type(mods[first]).__name__}) changes its input in place (max change {change:.3g}): the "
         f"caller's tensor is overwritten, so code that reads it afterwards (in a pre-norm block, the residual "
         f"stream x + f(norm(x))) sees the changed values{more}")
    return [Finding("inplace-input", s, [p for p, _ in inplace], [], harmful)]


def first_backward_divergence(mine, ref, mapping, order: dict[str, int], x, y, atol, rtol, seed=0,
                              train_mode=False):
    """The first MINE parameter, in reverse execution order, whose gradient differs from REF's (through
    the mapping); None when all agree."""
    grads = []
    for model in (mine, ref):
        model.train(train_mode)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        F.cross_entropy(model(x.clone()).float(), y).backward()
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
        if g_ref is None or g_ref.numel() != gm[n].numel():
            continue
        ok, d, rel = _close(gm[n], g_ref.reshape(gm[n].shape), atol, rtol)
        if not ok:
            return Divergence("gradient", n, str(r), d, rel, (tuple(gm[n].shape),))
    return None


# ----------------------------------------------------------------------------- the command

def align(mine_spec: str, ref_spec: str, *, img_size: int = 224, num_classes: int = 1000, batch: int = 2,
          seed: int = 0, atol: float | None = None, rtol: float | None = None, train_mode: bool = False,
          map_path: str | None = None, out_dir: str | Path | None = None, float32: bool = False) -> AlignResult:
    """Build both models, match and copy weights REF -> MINE (tensors paired by role), and find the first
    divergence (module docstring).

    Raises:
        AlignInputError: a model that rejects the input ("rejects-input") or does not return
            [batch, num_classes] floating logits ("output-width").
        ConfigError: a bad spec or a ``--map`` that does not fit.
    """
    mine, ref = (_build(spec, label, num_classes, img_size, seed) for spec, label in ((mine_spec, "MINE"),
                                                                                   (ref_spec, "REF")))
    dtypes = _float_dtypes(mine), _float_dtypes(ref)  # as built: the cast to float64 below makes them equal
    fix = dtype_message(mine)
    dtype = torch.float32 if float32 else torch.float64
    atol = atol if atol is not None else (1e-6 if float32 else 1e-10)
    rtol = rtol if rtol is not None else (1e-5 if float32 else 1e-8)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=g).to(dtype)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    (plain_m, order_m), (plain_r, order_r) = (
        _prepare(model, spec, label, x, num_classes, None if float32 else dtype)
        for spec, label, model in ((mine_spec, "MINE", mine), (ref_spec, "REF", ref)))
    plains, orders = (plain_m, plain_r), (order_m, order_r)
    mt, rt = _named_tensors(mine, plains[0]), _named_tensors(ref, plains[1])
    tm, tr = _units(mine, orders[0], plains[0]), _units(ref, orders[1], plains[1])
    stats_m, stats_r = init_stats(mt), init_stats(rt)  # fresh init, before REF's weights are copied
    match = Match(_read_map(map_path), [], set(), {}) if map_path else match_units(tm, tr)
    perturb(ref, seed)
    copy_weights(mine, ref, match.mapping, mt, rt)
    findings, ambiguous = [], set()
    if not map_path:
        findings, ambiguous = resolve_roles(mine, ref, match, tm, tr, x, stats_m, stats_r, mt, rt, atol, rtol)
    mapping = match.mapping
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "map.json").write_text(json.dumps(mapping, indent=1))
    um, ur = _unmatched(tm, tr, mapping, match.deviations)
    findings = structure_findings(mine, ref, mt, rt, mapping, match.deviations, um, ur) \
        + plain_tensor_findings(mine, plains[0], mapping, set(dict(ref.named_parameters()))) + findings
    for f in findings:  # a shape deviation found among the unmatched tensors is no longer unmatched
        if f.code == "shape-deviation":
            match.deviations.update(zip(f.mine, f.ref))
    um, ur = _unmatched(tm, tr, mapping, match.deviations)
    findings += dtype_findings(*dtypes, {**mapping, **match.deviations}, fix)
    for m, r in match.deviations.items():  # REF's value broadcast into the other shape, where it can be
        _copy_into(mt[m], rt[r])
    init = init_differences(stats_m, stats_r, mapping, ambiguous)
    pairs = pair_modules(mine, ref, {**mapping, **match.deviations}, plains[0], plains[1])
    holders = _holders(um)
    fwd, d_out, inplace = first_forward_divergence(mine, ref, pairs, x, atol, rtol, seed, train_mode, holders)
    findings += inplace_findings(mine, inplace, harmful=fwd is not None)
    alone = {}
    if fwd is not None and (um or ur or any(f.code in STRUCTURE_CODES for f in findings)):
        alone = compare_alone(mine, ref, pairs, x, atol, rtol, seed, train_mode, holders, _holders(ur))
        findings.append(alone_finding(alone))
    bwd, more = _backward_or_moot(fwd, mine, ref, mapping, orders[0], x, y, atol, rtol, seed, train_mode)
    notes = []
    if train_mode:
        notes.append("train mode: the seed is reset before each forward; dropout/drop-path masks match only where "
                     "both models draw them in the same order and shapes")
    return AlignResult(sum(p.numel() for p in mine.parameters()), sum(p.numel() for p in ref.parameters()),
                       mapping, um, ur, len(pairs), fwd, bwd, d_out, notes, init, findings + more,
                       dict(match.deviations), alone)


def _prepare(model: nn.Module, spec: str, label: str, x: torch.Tensor, num_classes: int, dtype
             ) -> tuple[list, dict[str, int]]:
    """Cast to ``dtype`` (None: keep; plain tensor attributes too, which ``.double()`` does not reach), eval
    mode, and one pre-flight forward pass that also sees which tensors are used when. Returns (the plain
    tensor attributes the pass uses, tensor name -> rank of first use)."""
    if dtype is not None:
        model.to(dtype)
        _cast_plain(model, [(m, a, ()) for m, a, _ in plain_tensor_candidates(model).values()], dtype)
    model.eval()
    cands = plain_tensor_candidates(model)
    named = {**_named_tensors(model), **{n: t for n, (_, _, t) in cands.items()}}
    order = _preflight(model, spec, label, x, num_classes, named)
    return used_plain(cands, order), order


def _unmatched(tm, tr, mapping: dict, deviations: dict) -> tuple[list[str], list[str]]:
    """(MINE, REF) tensor names, in execution order, that neither the mapping nor a shape deviation pairs."""
    used = {v for vs in _refs_of(mapping).values() for v in vs} | set(deviations.values())
    um = [f for _, ts in tm for f, _, _ in ts if f not in mapping and f not in deviations]
    ur = [f for _, ts in tr for f, _, _ in ts if f not in used]
    return um, ur


def _backward_or_moot(fwd, mine, ref, mapping, order, x, y, atol, rtol, seed, train_mode
                      ) -> tuple[Divergence | None, list[Finding]]:
    """The first differing gradient when the forward agreed; else "backward-moot" (a backward that raises
    is "backward-raises")."""
    if fwd is not None:
        return None, [Finding("backward-moot", "backward not compared: the forward outputs already differ, so "
                              "the gradients would too", deviation=False)]
    try:
        return first_backward_divergence(mine, ref, mapping, order, x, y, atol, rtol, seed, train_mode), []
    except RuntimeError as e:
        return None, [Finding("backward-raises", f"backward raised RuntimeError: {_first_line(e)}")]


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _preflight(model: nn.Module, spec: str, label: str, x: torch.Tensor, num_classes: int,
               named: dict[str, torch.Tensor]) -> dict[str, int]:
    """One forward pass: the model must take ``x`` and return [B, num_classes] floating logits. Returns the
    rank of first use of the ``named`` tensors on that pass (``first_use_order``).

    Raises:
        AlignInputError: "rejects-input" or "output-width", one line naming the model and what it returned.
    """
    b = x.shape[0]
    try:
        out, order = forward_watching(model, x.clone(), named)
    except Exception as e:
        raise AlignInputError("rejects-input", f"{label} {spec}: it rejects a {list(x.shape)} input "
                              f"({type(e).__name__}: {_first_line(e)}); give --img-size / --num-classes it takes"
                              ) from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (b, num_classes) or not out.is_floating_point():
        got = type(out).__name__ if not isinstance(out, torch.Tensor) else str(list(out.shape)) + (
            "" if out.is_floating_point() else f" {str(out.dtype).replace('torch.', '')}")
        raise AlignInputError("output-width", f"{label} {spec}: it returns {got} for a batch of {b}, expected "
                              f"logits [{b}, {num_classes}] (--num-classes {num_classes}; its factory must take "
                              f"num_classes, or return that many outputs)")
    return order


def _read_map(map_path: str) -> dict:
    try:
        return json.loads(Path(map_path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--map {map_path}: cannot read it as JSON ({e})") from e


def _build(spec: str, label: str, num_classes: int, img_size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return user_model(spec, num_classes, img_size=img_size)()
    except ConfigError as e:  # the spec parser speaks of --model; here it is MINE or REF
        raise ConfigError(str(e).replace("--model ", f"{label} ", 1)) from e


def format_result(r: AlignResult, mine: str, ref: str) -> str:
    """The report: counts, findings (structure first), unmatched, init, forward, backward, verdict
    (``verdict_line``); each finding and divergence with its code in brackets."""
    lines = [f"MINE {mine}: {r.params_mine:,} parameters", f"REF  {ref}: {r.params_ref:,} parameters",
             f"matched {len(r.mapping)} tensors; {len(r.unmatched_mine)} of MINE and {len(r.unmatched_ref)} of REF "
             f"unmatched; {r.pairs} module pairs compared"]
    fused = {k: v for k, v in r.mapping.items() if isinstance(v, list)}
    if fused:
        lines.append("fused/split: " + ", ".join(
            f"{k} <- {v[0]}[{v[1]}/{v[2]}]" if len(v) == 3 and isinstance(v[1], int) else f"{k} <- cat({', '.join(v)})"
            for k, v in list(fused.items())[:6]))
    for f in sorted(r.findings, key=lambda f: (not f.deviation, f.code == "backward-moot")):
        if f.code != "backward-moot":
            lines.append(f"[{f.code}] {f.sentence}")
    for label, names in (("MINE", r.unmatched_mine), ("REF", r.unmatched_ref)):
        if names:
            lines.append(f"unmatched in {label}: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else ""))
    if r.init:
        lines.append("[init-differs] init differs (before REF's weights were copied): " + "; ".join(r.init[:4])
                     + (" ..." if len(r.init) > 4 else ""))
    lines.append("forward:  " + (f"[{r.forward.code}] {r.forward.sentence()}" if r.forward else
                                 f"every paired module agrees; final outputs max abs diff {r.output_max_abs:.3g}"))
    if r.forward is not None:
        lines.append("backward: [backward-moot] not compared: the forward already differs")
    else:
        lines.append("backward: " + (f"[{r.backward.code}] {r.backward.sentence()}" if r.backward else
                                     "every matched gradient agrees"))
    lines += [f"note: {n}" for n in r.notes]
    lines.append(verdict_line(r))
    return "\n".join(lines)


def verdict_line(r: AlignResult) -> str:
    """``verdict: WORD``, with what else applies: "verdict: STRUCTURE DIFFERS (also DIVERGE, INIT DIFFERS)";
    INIT DIFFERS alone says what it means."""
    words = [VERDICTS[v] for v in r.verdicts]
    if r.verdicts == ["init-differs"]:
        return ("verdict: INIT DIFFERS (the same outputs and gradients once REF's weights are copied, but a "
                "different start: see [init-differs])")
    return "verdict: " + words[0] + (f" (also {', '.join(words[1:])})" if len(words) > 1 else "")
