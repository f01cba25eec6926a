"""The verdict on a paper's claim: which groups are its method and baseline, and the sentences (each with a
code: [claim-holds], [claim-fails], [claim-inconclusive], [claim-untested]) that the measured difference and
its 95 % Welch interval support. Only computes from numbers it is given."""

from __future__ import annotations

import math

from ..papers import PAPERS, Claim
from .runs import Group, Interval, seeds_for_half_width


def _matches(g: Group, sel: dict) -> bool:
    f = g.first.flat_config()  # a key older runs' configs lack reads as its default
    return all(f.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in sel.items())


def find_claim(groups: list[Group], paper_key: str) -> Claim | None:
    """The claim whose method and baseline are both among the groups (else the recipe's paper's claim)."""
    for c in (spec.claim for spec in PAPERS.values()):
        if any(_matches(g, c.method) for g in groups) and any(_matches(g, c.baseline) for g in groups):
            return c
    return PAPERS[paper_key].claim if paper_key in PAPERS else None


def claim_pair(groups: list[Group], claim: Claim | None) -> tuple[Group | None, Group | None]:
    """The claim's method group and baseline group among ``groups`` (None where absent)."""
    if claim is None:
        return None, None
    method = [g for g in groups if _matches(g, claim.method)]
    base = [g for g in groups if _matches(g, claim.baseline)]
    return (method[0] if method else None), (base[0] if base else None)


def verdict_sentences(claim: Claim, method: str, base: str, iv: Interval, n_dev: int = 0,
                      against: str = "") -> list[str]:
    """Each sentence from the numbers it states: the difference and its interval, whether the interval
    resolves a difference, the verdict on the claim with its code ([claim-holds], [claim-fails],
    [claim-inconclusive], [claim-untested]), the paper's gap against the interval, and what would
    resolve an inconclusive one. The claim's ``tolerance`` (points) is the gap below which the two
    count as matching: "matches or beats" holds when the interval's lower end is above -tolerance and
    fails when its upper end is below it; "beats" holds when the lower end is above 0 and fails when
    the upper end is below 0 or the whole interval is within +-tolerance; any other interval includes
    both 0 (or a gap within the tolerance) and a gap beyond it, and supports no claim either way."""
    n = f"n = {iv.n_a} + {iv.n_b}"
    if math.isnan(iv.lo):
        return [f"Measured difference, {method} minus {base}: {iv.d:+.2f} points top-1 ({n}).",
                "A variant with one seed has no spread, so there is no interval and no verdict: run at least "
                "3 seeds per variant [claim-untested]."]
    df = f"df {iv.df:.1f}, " if not math.isnan(iv.df) else ""
    out = [f"Measured difference, {method} minus {base}: {iv.d:+.2f} points top-1, 95% CI [{iv.lo:+.2f}, "
           f"{iv.hi:+.2f}] (Welch t, {df}{n})."]
    if iv.lo > 0 or iv.hi < 0:
        out.append(f"The interval excludes 0: the method is {'better' if iv.lo > 0 else 'worse'} beyond seed noise.")
    else:
        out.append(f"The interval contains 0: no difference is resolved; with {n} seeds only differences larger "
                   f"than its half-width, {iv.half_width:.2f} points, are detectable.")
    code = _claim_code(claim, iv)
    out.append(_claim_sentence(claim, iv, code))
    if claim.paper_gap is not None:
        where = "above" if claim.paper_gap > iv.hi else "below" if claim.paper_gap < iv.lo else "inside"
        out.append(f"The paper's gap, {claim.paper_gap:+.2f} points, lies {where} the interval.")
    if code == "claim-inconclusive":
        need = seeds_for_half_width(iv.std_a, iv.std_b, claim.tolerance)
        spread = f"the observed seed spread (std {iv.std_a:.2f} and {iv.std_b:.2f})"
        out.append(f"At {spread}, an interval of ±{claim.tolerance:.2f} points needs about {need} seeds per variant."
                   if need else f"At {spread}, more than 1000 seeds per variant would be needed for an interval of "
                                f"±{claim.tolerance:.2f} points.")
    if code == "claim-fails" and n_dev:
        out.append(f"The method's and the baseline's runs differ from {against or 'their recipe'} in {n_dev} "
                   f"settings (deviation log): check those before blaming the method.")
    return out


def _claim_code(claim: Claim, iv: Interval) -> str:
    """claim-holds, claim-fails or claim-inconclusive for an interval (see ``verdict_sentences``)."""
    tol = claim.tolerance
    if claim.relation == "matches or beats":
        return "claim-holds" if iv.lo >= -tol else "claim-fails" if iv.hi < -tol else "claim-inconclusive"
    if iv.lo > 0:
        return "claim-holds"
    if iv.hi < 0 or (iv.lo >= -tol and iv.hi <= tol):
        return "claim-fails"
    return "claim-inconclusive"


def _claim_sentence(claim: Claim, iv: Interval, code: str) -> str:
    """The verdict on the claim, with the end of the interval and the tolerance that decide it."""
    tol, rel = claim.tolerance, f"'{claim.relation}'"
    why = f"(tolerance ±{tol:.2f} points: {claim.tolerance_why})"
    if code == "claim-holds":
        if iv.lo > 0:
            return f"The lower end, {iv.lo:+.2f}, is above 0: {rel} holds at this scale [claim-holds]."
        return (f"The lower end, {iv.lo:+.2f}, is not below -{tol:.2f}: 'matches' holds at this scale, 'beats' is "
                f"not shown {why} [claim-holds].")
    if code == "claim-fails":
        if claim.relation == "matches or beats":
            return (f"The upper end, {iv.hi:+.2f}, is below -{tol:.2f}: the method is behind by more than the "
                    f"tolerance, so {rel} does not hold at this scale {why} [claim-fails].")
        if iv.hi < 0:
            return f"The upper end, {iv.hi:+.2f}, is below 0: {rel} does not hold at this scale [claim-fails]."
        return (f"The whole interval lies within ±{tol:.2f} points: the two match at this scale and {rel} does "
                f"not show {why} [claim-fails].")
    edge = tol if claim.relation == "beats" and iv.hi > tol else -tol
    inside = "0" if iv.lo <= 0 <= iv.hi else f"{iv.hi:+.2f} (within the tolerance)"
    return (f"The interval, {iv.hi - iv.lo:.2f} points wide, includes both {inside} and gaps of {edge:+.2f} "
            f"points or beyond: it supports no claim either way {why} [claim-inconclusive].")
