"""`reproscope report RUN_DIR [RUN_DIR ...]`: the reproduction note's numbers, tables and figures.

Groups runs by variant (seeds are repeats), compares each method with its paper baseline, and
writes ``report.md`` and ``report.pdf`` (fpdf2; at most 3 pages, laid out to the content) with PNG
figures beside them, and a PNG preview of each page (``report-page1.png``, ...; pypdfium2) for a
machine without a PDF viewer. The same list of content blocks feeds both renderers, so the two never
disagree. Every sentence is generated from the numbers it states; the verdict on the paper's claim
carries a code ([claim-holds], [claim-fails], [claim-inconclusive], [claim-untested]; see
``verdict_sentences``). Only reads run directories.
"""

from __future__ import annotations

import math
import statistics
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..model import list_models, model_info
from ..papers import PAPERS, Claim, figure_captions
from ..recipes import get_recipe
from ..runfiles import NOT_OBSERVED, observed
from ..train.events import Event
from .ablation import ablation_rows, plot_effects, read_ablation, unaffordable_sentence
from .paths import display_arg, display_path, report_base
from .report_figures import plot_curves, plot_grad_norms
from .runs import (Group, Interval, RunRecord, group_runs, is_science, load_run, seeds_for_half_width,
                   welch_interval)


MAX_PAGES = 3
NL = {"new_x": "LMARGIN", "new_y": "NEXT"}  # fpdf2: every paragraph starts at the left margin on a new line


def _matches(g: Group, sel: dict) -> bool:
    f = g.first.flat_config()  # a key older runs' configs lack reads as its default
    return all(f.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in sel.items())


def find_claim(groups: list[Group], paper_key: str) -> Claim | None:
    """The claim whose method and baseline are both among the groups (else the recipe's paper's claim)."""
    for c in (spec.claim for spec in PAPERS.values()):
        if any(_matches(g, c.method) for g in groups) and any(_matches(g, c.baseline) for g in groups):
            return c
    return PAPERS[paper_key].claim if paper_key in PAPERS else None


def paper_facts(run: RunRecord) -> dict:
    """The parent paper recipe's setup and the paper's top-1 for this run's model family."""
    parent = run.config.get("parent") or ""
    try:
        p = get_recipe(parent) if parent else None
    except ConfigError:
        p = None
    if p is None:
        return {}
    name = p.model.name
    top1 = {}
    for norm in ("ln", "dyt"):
        cand = f"{name}_dyt" if norm == "dyt" else name
        if cand in list_models():
            top1[norm] = model_info(cand).paper_top1
    return {"recipe": p, "top1": top1, "model": name}


# ----------------------------------------------------------------------------- content


@dataclass(frozen=True)
class Context:
    """What every report section reads: the seed groups and their runs, where the report goes (``out``),
    the command that wrote it, the folder paths are shown relative to (``base``), the claim under test
    and the parent paper recipe's facts (``paper_facts``)."""

    groups: list[Group]
    runs: list[RunRecord]
    out: Path
    command: str
    base: Path
    claim: Claim | None
    facts: dict

    @property
    def first(self) -> RunRecord:
        return self.runs[0]


def build_blocks(groups: list[Group], out: Path, command: str, base: Path | None = None) -> list[tuple]:
    """The report as blocks: ('h', text), ('p', text), ('table', header, rows), ('img', path, caption), ('code', lines),
    one section function of ``SECTIONS`` after the other. Paths (data root, model files, the runs' commands)
    are shown relative to ``base`` (default: the repository holding ``out``, else the current directory;
    ``paths.display_path``)."""
    runs = [r for g in groups for r in g.runs]
    paper_key = (runs[0].config.get("parent") or runs[0].recipe).split("-")[0]
    ctx = Context(groups, runs, out, command, base or report_base(out), find_claim(groups, paper_key),
                  paper_facts(runs[0]))
    blocks: list[tuple] = [("title", f"Reproduction report: {', '.join(sorted({r.recipe for r in runs}))}")]
    for section in SECTIONS:
        blocks += section(ctx)
    return blocks


def _scope(c: Context) -> list[tuple]:
    scale_note = ""
    if not any(r.env.get("gpus") for r in c.runs):
        scale_note = (" All runs here were trained on a CPU: this is a CPU-scale reproduction (smaller model, "
                      "resolution and schedule than the paper), not a GPU-scale one.")
    return [("h", "Scope of reproducibility"), ("p", "The claim tested: " + (c.claim.text if c.claim else
                                                "(no registered claim for this paper)") + scale_note),
            ("h", "Methodology"), ("p", _methodology(c.runs, c.base))]


def _setup(c: Context) -> list[tuple]:
    """Paper vs ours: who trained, data, model, resolution, epochs, steps, batch, images seen, normalisation,
    evaluation mode, precision, device-hours. Each "ours" cell states what these runs did, per variant where
    they differ, or "not observed" (a watched loop that did not show it)."""
    p, rows = c.facts.get("recipe"), []

    def both(label, paper_val, ours):
        rows.append([label, str(paper_val), ours])
    both("trained by", "the paper's training script", _ours(c, lambda r: r.trained_by))
    both("data", f"{p.data.dataset} (1.28M train images)" if p else "-", _ours(c, lambda r: _data_cell(r, c.base)))
    both("model", p.model.name if p else "-", ", ".join(sorted({g.first.model_label(c.base) for g in c.groups})))
    both("resolution (px)", p.data.img_size if p else "-", _ours(c, lambda r: str(r.value("data.img_size"))))
    both("epochs", p.sched.epochs if p else "-", _ours(c, _epochs_cell))
    both("optimizer steps", "-", _ours(c, lambda r: f"{r.steps:,}"))
    both("batch", p.data.batch_size if p else "-", _ours(c, lambda r: str(r.value("data.batch_size"))))
    both("images seen per run", f"{p.sched.epochs * 1.281e6 / 1e6:.0f}M" if p else "-", _ours(c, _images_cell))
    both("normalisation", "ImageNet mean/std" if p else "-", _ours(c, _normalisation_cell))
    both("evaluation", "model.eval(), EMA weights" if p and p.reg.eval_ema else "model.eval()" if p else "-",
         _ours(c, _eval_cell))
    both("device-hours (all runs)", "not stated", _hours_cell(c.runs))
    both("precision", p.precision.amp if p else "-", _ours(c, _precision_cell))
    return [("h", "Setup: paper vs ours"), ("table", ["", "paper", "ours"], rows)]


def _hours_cell(runs: list[RunRecord]) -> str:
    timed = [r for r in runs if r.epoch_times]
    if not timed:
        return "not measured (no epoch was timed: the runs logged no evaluation)"
    n = len(runs)
    return (f"{sum(r.device_hours for r in timed):.2f} h on {runs[0].device} ({n} run{'s' * (n != 1)}; median epoch "
            f"time x epochs" + (f"; {n - len(timed)} run(s) not timed" if len(timed) < n else "") + ")")


def _ours(c: Context, cell) -> str:
    """One cell for all runs when they agree; else ``variant: value`` per group (and per run within a group
    where its seeds differ)."""
    values = {cell(r) for r in c.runs}
    if len(values) == 1:
        return values.pop()
    parts = []
    for g in c.groups:
        vs = [cell(r) for r in g.runs]
        if len(set(vs)) == 1:
            parts.append(f"{g.label}: {vs[0]}")
        else:
            parts += [f"{g.label}, {r.name}: {v}" for r, v in zip(g.runs, vs)]
    return "; ".join(parts)


def setup_facts(r: RunRecord) -> dict:
    """What the setup section states of run ``r``, as values (the cells are sentences made from these;
    tests assert these): ``trained_by`` ("trainer" | "watch"), ``steps``, ``epochs`` (planned, for a
    watched loop the evaluations or steps / steps per epoch; ``NOT_OBSERVED``), ``ending`` (code) and
    ``ending_step``, ``batch``, ``img_size``, ``normalisation`` ({"mean", "std"}, "train-set-stats" or
    ``NOT_OBSERVED``), ``eval_mode`` ("eval" | "train" | ``NOT_OBSERVED``), ``eval_ema`` (bool or
    ``NOT_OBSERVED``), ``precision`` ("fp32" | "bf16" | "fp16" | "auto" | ``NOT_OBSERVED``)."""
    end = r.ending
    d = ((r.loop or {}).get("details", {}).get("data") or {}).get("details") or {}
    if not r.watched:
        norm = "train-set-stats"
    else:
        norm = {"mean": d["mean"], "std": d["std"]} if "mean" in d else NOT_OBSERVED
    train_mode = r.value("eval.train_mode") if r.val else NOT_OBSERVED
    eval_mode = NOT_OBSERVED if train_mode is NOT_OBSERVED else "train" if train_mode else "eval"
    if not r.watched:
        eval_mode = "eval"
    return {"trained_by": "watch" if r.watched else "trainer", "steps": r.steps,
            "epochs": r.value("sched.epochs") if end.get("how") in ("finished", "incomplete") or not r.watched
            else NOT_OBSERVED,
            "ending": end.get("how"), "ending_step": end.get("step"), "batch": r.value("data.batch_size"),
            "img_size": r.value("data.img_size"), "normalisation": norm, "eval_mode": eval_mode,
            "eval_ema": r.value("reg.eval_ema") if r.val else NOT_OBSERVED, "precision": r.value("precision.amp")}


def _data_cell(r: RunRecord, base: Path) -> str:
    ds = r.value("data.dataset")
    if ds is NOT_OBSERVED:
        given = ((r.loop or {}).get("details", {}).get("data") or {}).get("details")
        return ("the loop's own data (dataset not observed; its transforms were read from data=)" if given else
                "the loop's own data (not observed: pass data= to reproscope.watch)")
    root = r.value("data.root")
    return f"{ds} ({display_path(root, base) if observed(root) and root else 'built-in'})"


def _epochs_cell(r: RunRecord) -> str:
    f, end = setup_facts(r), r.ending
    e = f["epochs"]
    if end.get("how") not in ("finished", "incomplete"):
        return f"{e if not r.watched else 'planned: not observed'}; {end['reason']}"
    if end.get("how") == "incomplete":
        return f"{e} planned; {end['reason']}"
    return str(e) if not r.watched else (f"{e} (evaluations)" if observed(e) and r.val else
                                         f"{e} (steps / batches per epoch of data=)" if observed(e) else
                                         "not observed (no w.evaluate and no data= with a length)")


def _images_cell(r: RunRecord) -> str:
    seen, per = r.images_seen, r.images_per_epoch
    if seen is NOT_OBSERVED:
        return "not observed (no batch size)"
    return _count(seen) + (f" ({per:,} per epoch)" if per is not NOT_OBSERVED else "")


def _count(n: int) -> str:
    """An image count: 1.28M, or the number itself under a million."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _normalisation_cell(r: RunRecord) -> str:
    n = setup_facts(r)["normalisation"]
    if n == "train-set-stats":
        return "the training set's channel mean and std (computed by the Trainer)"
    if n is not NOT_OBSERVED:
        return f"mean {_rounded(n['mean'])}, std {_rounded(n['std'])} (the loop's Normalize)"
    if ((r.loop or {}).get("details", {}).get("data") or {}).get("details"):
        return "not observed: no Normalize in the transforms read from data= (done elsewhere, or not at all)"
    return "not observed (pass data= to reproscope.watch)"


def _rounded(v) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)


def _precision_cell(r: RunRecord) -> str:
    amp = r.value("precision.amp")
    if amp == "auto":
        return f"auto: {'bf16' if r.env.get('gpus') else 'fp32'} on {r.device}"
    return f"{amp} autocast" if amp in ("bf16", "fp16") else str(amp)


def _eval_cell(r: RunRecord) -> str:
    f = setup_facts(r)
    if not r.val:
        return "not observed (the loop logged no evaluation: w.evaluate)" if r.watched else "no evaluation yet"
    mode = {"eval": "model.eval()", "train": "in train mode (BatchNorm batch statistics, dropout on)"}.get(
        f["eval_mode"], "not observed")
    return mode + (", EMA weights" if f["eval_ema"] is True else "")


def _paper_top1(c: Context, g: Group) -> float | None:
    """The paper's top-1 beside group ``g``: the claim's method or baseline number, else the paper's per
    norm (DyT); none for a squash ablation."""
    claim, norm = c.claim, g.first.config["model"].get("norm", "default")
    if claim is not None and claim.paper_top1 is not None:  # the paper's method and baseline rows only
        top1 = (claim.paper_top1[0] if _matches(g, claim.method) else
                claim.paper_top1[1] if _matches(g, claim.baseline) else None)
    else:
        top1 = c.facts.get("top1", {}).get(norm) if norm in ("ln", "dyt") else None
    return None if g.first.config["model"].get("dyt_squash", "tanh") != "tanh" else top1


def _results(c: Context) -> list[tuple]:
    """Val top-1 per group beside the paper's, the verdict on the claim, and raw vs EMA weights."""
    res_rows = []
    for g in c.groups:
        m, s, n = g.mean_std("top1")
        paper_top1 = _paper_top1(c, g)
        seeds = ", ".join(f"{v:.2f}" for v in g.metric("top1"))
        incomplete = [r for r in g.runs if not r.complete]
        if incomplete:
            seeds += f" ({len(incomplete)} run(s) did not finish: {'; '.join(r.ending['reason'] for r in incomplete)})"
        res_rows.append([g.label, f"{paper_top1:.1f}" if paper_top1 else "-", _mean_std(m, s, n), str(n), seeds])
    paper_col = (f"paper {c.claim.paper_models} (IN-1K)" if c.claim is not None and c.claim.paper_models else
                 f"paper {c.facts['model']} (IN-1K)" if c.facts else "paper")
    blocks = [("h", "Results (val top-1, %)"),
              ("table", ["variant", paper_col, "ours: mean ± std", "n", "per seed"], res_rows)]
    verdict = _verdict(c.groups, c.claim)
    if verdict:
        blocks.append(("p", verdict))
    ema_rows = [[g.label, f"{statistics.fmean(g.metric('raw_top1')):.2f}", f"{statistics.fmean(g.metric('ema_top1')):.2f}",
                 "EMA" if g.first.config.get("reg", {}).get("eval_ema") else "raw"]
                for g in c.groups if g.metric("raw_top1") and g.metric("ema_top1")]
    if ema_rows:
        blocks += [("p", "Raw and EMA weights, both evaluated at the end (mean over seeds; the results above "
                         "report the one reg.eval_ema names). A large gap means the EMA lags the run."),
                   ("table", ["variant", "raw top-1", "EMA top-1", "reported"], ema_rows)]
    return blocks


def _checklist_and_notes(c: Context) -> list[tuple]:
    return [("h", "Reproducibility checklist"),
            ("table", ["item (NeurIPS / ACL checklists)", "this campaign"], _checklist(c.groups, c.runs, c.claim)),
            ("h", "What was easy, what was difficult, communication with the authors"),
            ("p", "(fill in before sharing: edit report.md, then `reproscope note report.md` renders it. What "
                  "was easy to reproduce; what was difficult and why; whether the authors were contacted and "
                  "what they said; the development effort in plain words.)")]


def _curves(c: Context) -> list[tuple]:
    c.out.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(c.groups, c.out / "curves.png")
    return [("h", "Curves"), ("img", curves, "Train loss (left) and val top-1 (right): mean over seeds, shaded min-max.")]


def _event_row(r: RunRecord) -> list[str]:
    """A run's event counts by type, and what its first non-finite step and its divergence flag say."""
    kinds: dict[str, int] = {}
    for e in r.events:
        kinds[e.get("type", "?")] = kinds.get(e.get("type", "?"), 0) + 1
    first_ev = next((e for e in r.events if e.get("type") == "nonfinite"), None)
    div = next((e for e in r.events if e.get("type") == Event.DIVERGING), None)
    where = (first_ev or {}).get("module") or ((first_ev or {}).get("module_type", "") + "'s own forward"
                                                if (first_ev or {}).get("module_type") else "an unlocated place")
    notes = ([f"first non-finite at step {first_ev['step']} in {where} (phase {first_ev.get('phase', '?')})"]
             if first_ev else []) \
        + ([f"diverging from step {div['step']}: {div.get('reason', '')}"] if div else []) \
        + [f.get("sentence", "") for f in ((div or {}).get("findings") or {}).values()]
    return [r.name, str(kinds.get(Event.NONFINITE, 0)), str(kinds.get(Event.DIVERGING, 0) + kinds.get(Event.GRAD_NORM_OVERFLOW, 0)),
            str(kinds.get(Event.LOSS_SPIKE, 0)), str(kinds.get(Event.SCALER_OVERFLOW, 0)),
            str(kinds.get(Event.ROLLBACK, 0)), "; ".join(notes)]


def _figure_order(claim: Claim | None) -> list[str]:
    """The registered papers' figures, the claim's own paper's first (``papers.PaperSpec.figures``)."""
    specs = sorted(PAPERS.values(), key=lambda s: s.claim is not claim)
    return list(dict.fromkeys(f for s in specs for f in s.figures))


def _instrumentation(c: Context) -> list[tuple]:
    """Event counts per run, the gradient-norm curve, the paper-figure probes at the step a run was
    flagged as diverging (two runs at most) and, for the method and its baseline, one analysis figure each."""
    gn = plot_grad_norms(c.groups, c.out / "grad_norm.png")
    blocks = [("h", "Instrumentation highlights"),
              ("table", ["run", "non-finite", "diverging", "loss spikes", "fp16 skips", "rollbacks", "note"],
               [_event_row(r) for r in c.runs]),
              ("img", gn, "Global gradient norm (before clipping), mean over seeds.")]
    order, captions = _figure_order(c.claim), figure_captions()
    at_divergence = [f for f in order if f.endswith("_at_divergence.png")]
    over_training = [f for f in order if f not in at_divergence]
    diverged = [r for r in c.runs if any(e.get("type") == Event.DIVERGING for e in r.events)]
    for r in diverged[:2]:  # the paper-figure probes taken when the run was flagged: what blew up
        step = next(e["step"] for e in r.events if e.get("type") == Event.DIVERGING)
        for fig in at_divergence:
            src = r.path / "figures" / fig
            if src.exists():
                dst = c.out / f"{_slug(r.name)}-{fig}"
                shutil.copyfile(src, dst)
                blocks.append(("img", dst, f"{r.name}: {captions[fig]}, at step {step}, when the run was "
                                            f"flagged as diverging"))
    claim = c.claim
    probe_groups = ([g for g in c.groups if claim and (_matches(g, claim.method) or _matches(g, claim.baseline))]
                    or c.groups)[:2]  # the method and its baseline: keeps the PDF within its page limit
    for g in probe_groups:
        for fig in over_training:
            src = g.first.path / "figures" / fig
            if src.exists():
                dst = c.out / f"{_slug(g.label)}-{fig}"
                shutil.copyfile(src, dst)
                blocks.append(("img", dst, f"{g.label}: {captions[fig]} (run {g.first.name})"))
                break
    return blocks


def _deviations(c: Context) -> list[tuple]:
    """The science settings that differ from the recipe each run was audited against (operational ones
    omitted), once each; a "runs" column names the variants (or runs) a row holds for when not all."""
    rows: dict[tuple, list] = {}  # (key, value, reason) -> [row, the runs that have it]
    for r in c.runs:
        for dv in r.deviations:
            if not is_science(dv["key"]):  # seeds, threads, progress bars, probes: not deviations of the science
                continue
            key = (dv["key"], str(dv["value"]), dv.get("reason", ""))
            if key not in rows:
                rows[key] = [[dv["key"], _shown_value(dv["parent"], c.base), _shown_value(dv["value"], c.base),
                              _deviation_reason(dv)], []]
            rows[key][1].append(r)
    partial = any(len(runs) < len(c.runs) for _, runs in rows.values())
    dev_rows = [row + ([_holders(c, runs)] if partial else []) for row, runs in rows.values()]
    against = _against(c.runs)
    blocks = [("h", f"Deviation log (against {', '.join(against) or 'no parent recipe'}; seeds, threads "
                    f"and other operational settings omitted)"),
              ("table", ["field", _paper_column(c), "ours", "reason"] + (["runs"] if partial else []), dev_rows)]
    unseen = sorted({k for r in c.runs for k in r.not_observed})
    if unseen:
        stopped = [r for r in c.runs if r.watched and r.ending.get("how") not in ("finished", None)]
        why = ("; " + "; ".join(f"{r.name} {r.ending['reason']}, so its run-length settings were not shown"
                                for r in stopped)) if stopped else ""
        blocks.append(("p", f"Not observed in the watched loop, so not compared (loop.json says why for each; "
                            f"data= and ema= show the data pipeline and the EMA{why}): {', '.join(unseen)}."))
    elif any(r.watched and not r.deviations for r in c.runs):
        blocks.append(("p", "A watched loop without against=: run `reproscope audit RUN_DIR --against RECIPE` to "
                            "fill this log."))
    return blocks


def _against(runs: list[RunRecord]) -> list[str]:
    """The recipes the runs' deviations are held against: each run's ``deviations.json`` parent (an audit of a
    watched loop writes the recipe it audited against there), else its config's parent."""
    return sorted({r.audited_against or r.config.get("parent") or "" for r in runs} - {""})


def _holders(c: Context, runs: list[RunRecord]) -> str:
    """Which runs a deviation row holds for: whole variants by label, else the runs by name."""
    names = []
    for g in c.groups:
        mine = [r for r in g.runs if any(r is x for x in runs)]
        if len(mine) == len(g.runs):
            names.append(g.label)
        else:
            names += [r.name for r in mine]
    return ", ".join(names) if len(runs) < len(c.runs) else "all"


def _paper_column(c: Context) -> str:
    """The deviation table's reference column: "paper" when the recipe held against is a paper's, else its name."""
    parents = _against(c.runs)
    if parents and all(p.split("-")[0] in PAPERS for p in parents):
        return "paper"
    return parents[0] if len(parents) == 1 else "recipe"


def _deviation_reason(dv: dict) -> str:
    """A deviation's reason cell: the recipe's or the user's declared reason; for a watched loop's audit
    row that was not declared, "not declared" and the rule's consequence (a consequence is no reason)."""
    code = dv.get("code", "value")  # a watched loop's audit: the code, and likely mistakes marked
    tag = f" [{code}{', likely mistake' if dv.get('mistake') else ''}{', declared' if dv.get('declared') else ''}]" \
        if code != "value" or dv.get("declared") else ""
    if dv.get("declared"):
        consequence = f" Consequence: {dv['consequence']}" if dv.get("consequence") else ""
        return dv.get("reason", "") + tag + consequence
    if "declared" in dv:  # an audit row of a watched loop, not declared: the rule's sentence is a consequence
        return f"not declared. Consequence: {dv.get('reason', '')}{tag}"
    return dv.get("reason", "") + tag


def _ablations(c: Context) -> list[tuple]:
    """"What each deviation cost at this scale": each run's ``reproscope ablate`` result (effect of reverting
    each deviation, with its interval), when it has one."""
    blocks = []
    for r in c.runs:
        result = read_ablation(r.path)
        if not result:
            continue
        fig = plot_effects(result, c.out / f"{_slug(r.name)}-effects.png")
        blocks += [("h", "What each deviation cost at this scale"),
                   ("p", f"`reproscope ablate` of {r.name}: each deviation reverted to the parent recipe's value, "
                         f"seeds {', '.join(map(str, result['seeds']))} per arm; the effect is the reverted arm's final "
                         f"val top-1 minus the run's (points), with its 95 % Welch interval; an interval that contains 0 "
                         f"is not resolved at that n. " + unaffordable_sentence(result)),
                   ("table", ["reverted", "ours -> parent", "effect", "95 % CI", "n", "says"], ablation_rows(result))]
        if fig is not None:
            blocks.append(("img", fig, "Effect of reverting each deviation on final val top-1 (95 % Welch CI)."))
    return blocks


def _environment_and_commands(c: Context) -> list[tuple]:
    env = c.first.env
    return [("h", "Environment"),
            ("p", f"python {env.get('python', '?')}, torch {env.get('torch', '?')}, torchvision "
                  f"{env.get('torchvision', '?')}, device {c.first.device}, CUDA {env.get('cuda') or '-'}, "
                  f"{env.get('platform', '?')}; git commit of each run: {_commits(c.runs)}."),
            ("h", "Commands that reproduce every number"),
            ("code", [r.command_line(c.base) for r in c.runs] + [c.command])]


SECTIONS = (_scope, _setup, _results, _checklist_and_notes, _curves, _instrumentation, _deviations, _ablations,
            _environment_and_commands)  # the report's order: a new section is a function here


def _shown_value(value, base: Path) -> str:
    """A config value in a table: a path (data.root, a model file spec) as ``paths.display_arg`` shows it."""
    return display_arg(value, base) if isinstance(value, str) else str(value)


def _methodology(runs: list[RunRecord], base: Path) -> str:
    """Code used, who trained it, reference consulted, data splits and preprocessing, each from what the
    run directories show (the user's model files relative to ``base``)."""
    user = sorted({r.model_label(base) for r in runs if r.model_source})
    ours = sorted({r.config.get("model", {}).get("name", "?") for r in runs if not r.model_source})
    code = "; ".join(([f"reproscope's {', '.join(ours)}, written from the paper (the model file's docstring lists "
                       f"where it deviates)"] if ours else [])
                     + ([f"the user's own model {', '.join(user)}"] if user else []))
    who = " and ".join(sorted({r.trained_by for r in runs}))
    return (f"Code: {code}, trained by {who}. Reference repository consulted: (fill in: which, and when). "
            + " ".join(dict.fromkeys(_data_sentence(r) for r in runs)))


def _data_sentence(r: RunRecord) -> str:
    """Data and preprocessing, as this run's data path did them."""
    if r.watched:
        d = ((r.loop or {}).get("details", {}).get("data") or {}).get("details") or {}
        if not d:
            return ("Data and preprocessing: the user's loop's own, not observed (the loop gave reproscope.watch no "
                    "data=): state them here.")
        tf = ", ".join(d.get("train_transforms") or []) or "none read"
        val = ", ".join(d.get("val_transforms") or []) or "not given"
        return f"Data: the user's loop's own; train transforms {tf}; val transforms {val} (read from data=)."
    ds, size = r.value("data.dataset"), r.value("data.img_size")
    if ds == "shapes10":
        return (f"Data: the built-in shapes10 (train and val drawn from disjoint seeds), generated at {size} px (no "
                f"resize, no cache), normalised by the training set's channel mean and std; training augmentation "
                f"as in config.json (aug.*).")
    res = r.value("data.cache_res")
    crop = r.value("data.eval_crop_pct")
    res = res if observed(res) and res else round(size / (crop if observed(crop) and crop else 0.875))
    return (f"Data: {ds}, its standard train split for training and its standard validation split for every "
            f"number here. Preprocessing: images resized to {res} px once (uint8 cache), centre crop to {size} px "
            f"for evaluation, normalised by the training set's channel mean and std; training augmentation as in "
            f"config.json (aug.*).")


def _checklist(groups: list[Group], runs: list[RunRecord], claim: Claim | None = None) -> list[list[str]]:
    """The rows of the NeurIPS / ACL reproducibility checklists that the run directories answer."""
    params = []
    for g in groups:
        name = g.first.config.get("model", {}).get("name")
        if g.first.model_source is None and name in list_models():
            from ..model.build import build_model
            from ..config import recipe_from_dict
            from ..model.counting import build_for_counting, count_params
            try:
                r = recipe_from_dict(g.first.config)
                m = build_for_counting(lambda: build_model(r.model, r.data.num_classes or 10, r.data.img_size))
                params.append(f"{g.label}: {count_params(m) / 1e6:.2f}M")
            except Exception:  # an old or hand-edited config: leave the count out rather than fail the report
                params.append(f"{g.label}: ?")
        else:
            params.append(f"{g.label}: see the model file")
    seeds = "; ".join(f"{g.label}: {len(g.runs)} (seeds {', '.join(_seed(r) for r in g.runs)})" for g in groups)
    n_dev = _n_deviations(runs)
    parents = _parents(runs)
    orphans = sorted({r.recipe for r in runs if not (r.audited_against or r.config.get("parent"))})
    hyper = ("watched loops audited against no recipe (`reproscope audit RUN_DIR --against RECIPE` fills the "
             "deviation log)" if not parents and all(r.watched for r in runs) else
             f"no paper recipe ({', '.join(orphans)}: no parent recipe): {n_dev} changed from the recipe "
             f"(deviation log)" if not parents else
             f"the paper recipe {parents[0]}'s, {n_dev} changed (deviation log; {_n_reasoned(runs)} with a stated "
             f"reason)" if len(parents) == 1
             else f"the paper recipes {', '.join(parents)}: {n_dev} changed (deviation log; {_n_reasoned(runs)} with a "
                  f"stated reason)")
    if parents and orphans:
        hyper += f"; {', '.join(orphans)} name no paper recipe"
    return [["model parameters", "; ".join(params)],
            ["compute (all runs)", _hours_cell(runs) + "; " + _images_total(runs)],
            ["number of runs", seeds],
            ["statistics", _statistics(groups, claim)],
            ["splits", "train / val as in Methodology; no test set is used for any choice"],
            ["hyperparameters", f"{hyper}; search: (fill in: none, or its bounds and trials)"]]


def _seed(r: RunRecord) -> str:
    return "not given" if r.seed is None else str(r.seed)


def _images_total(runs: list[RunRecord]) -> str:
    seen = [r.images_seen for r in runs]
    known = [s for s in seen if s is not NOT_OBSERVED]
    if not known:
        return "images seen not observed (no batch size)"
    return f"{_count(sum(known))} images seen" + (f" ({len(seen) - len(known)} run(s) not observed)"
                                                     if len(known) < len(seen) else "")


def _statistics(groups: list[Group], claim: Claim | None) -> str:
    """The checklist's statistics row: what the results and the verdict computed, for these runs."""
    ns = sorted({len(g.metric("top1")) for g in groups})
    head = "mean ± standard deviation over seeds (n = " + ", ".join(map(str, ns)) + ")" + \
        ("; one seed: its value, no std" if 1 in ns else "")
    method, base = claim_pair(groups, claim)
    if method is None or base is None:
        return head + "; no difference computed (no method and baseline pair among these runs)"
    if min(len(method.metric("top1")), len(base.metric("top1"))) < 2:
        return head + "; no interval for the difference (a side has fewer than 2 seeds)"
    return head + "; the method minus baseline difference with a 95 % Welch interval (exact t quantile at its " \
                  "fractional df)"


def _parents(runs: list[RunRecord]) -> list[str]:
    """The recipes the runs' deviations are held against (``_against``), sorted, once each."""
    return _against(runs)


def _n_reasoned(runs: list[RunRecord]) -> int:
    """How many of the changed keys carry a reason: a recipe's, or one the user declared (a watched loop's
    undeclared audit rows carry only a consequence)."""
    return len({dv["key"] for r in runs for dv in r.deviations if is_science(dv["key"])
                and (dv.get("declared") or ("declared" not in dv and dv.get("reason")))})


def _n_deviations(runs: list[RunRecord]) -> int:
    """How many config keys differ from the parent (or the recipe): seeds, threads and logging not counted."""
    return len({dv["key"] for r in runs for dv in r.deviations if is_science(dv["key"])})


def _mean_std(m: float, s: float, n: int) -> str:
    """A results cell: mean ± std over n seeds; one seed has no std, so none is shown."""
    return "no eval" if not n else f"{m:.2f} (one seed: no std)" if n == 1 else f"{m:.2f} ± {s:.2f}"


def _commits(runs: list[RunRecord]) -> str:
    by: dict[str, list[str]] = {}
    for r in runs:
        commit = r.env.get("git_commit", "?")
        by.setdefault(str(commit)[:12] if commit else "not in a git work tree", []).append(r.name)
    return "; ".join(f"{c} ({', '.join(n)})" for c, n in by.items())


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_")


def claim_pair(groups: list[Group], claim: Claim | None) -> tuple[Group | None, Group | None]:
    """The claim's method group and baseline group among ``groups`` (None where absent)."""
    if claim is None:
        return None, None
    method = [g for g in groups if _matches(g, claim.method)]
    base = [g for g in groups if _matches(g, claim.baseline)]
    return (method[0] if method else None), (base[0] if base else None)


def _verdict(groups: list[Group], claim: Claim | None) -> str:
    """The measured difference between the claim's method and baseline and what it says of the claim,
    as one paragraph (``verdict_sentences``; the deviations counted are those of these two groups' runs
    from their parent recipes); "" without a claim."""
    if claim is None:
        return ""
    method, base = claim_pair(groups, claim)
    if method is None or base is None:
        return "The method and its baseline are not both among these runs: no difference to report [claim-untested]."
    a, b = method.metric("top1"), base.metric("top1")
    if not a or not b:
        return "A method or baseline run has no evaluation yet: no difference to report [claim-untested]."
    n_dev = _n_deviations(method.runs + base.runs)
    against = " and ".join(_parents(method.runs + base.runs))
    return " ".join(verdict_sentences(claim, method.label, base.label, welch_interval(a, b), n_dev, against))


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


# ----------------------------------------------------------------------------- renderers

def to_markdown(blocks: list[tuple], out: Path) -> str:
    lines = []
    for b in blocks:
        kind = b[0]
        if kind == "title":
            lines += [f"# {b[1]}", ""]
        elif kind == "h":
            lines += [f"## {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in b[2]]
            lines.append("")
        elif kind == "img" and b[1] is not None:
            lines += [f"![{b[2]}]({Path(b[1]).relative_to(out)})", "", f"*{b[2]}*", ""]
        elif kind == "code":
            lines += ["```", *b[1], "```", ""]
    return "\n".join(lines)


def _fonts(pdf) -> tuple[str, str]:
    """Register DejaVu Sans and Sans Mono from matplotlib's own font folder (a dependency, so nothing is
    downloaded): Unicode text (±, →, ≤, α, β, γ) prints as such. Returns (sans, mono) family names."""
    import matplotlib
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for family, stem in (("DejaVu", "DejaVuSans"), ("DejaVuMono", "DejaVuSansMono")):
        for style, suffix in (("", ""), ("B", "-Bold"), ("I", "-Oblique")):
            pdf.add_font(family, style, str(ttf / f"{stem}{suffix}.ttf"))
    return "DejaVu", "DejaVuMono"


def wrap_command(line: str, max_chars: int, indent: int = 4) -> list[str]:
    """A code line too long for ``max_chars`` characters, wrapped the way a shell reader expects: only
    at spaces, before an option (``-x``/``--key``) where possible so that an option stays with its
    value, each broken line ending in `` \\`` and continued with ``indent`` spaces. A single word
    longer than the line is kept whole (the caller shrinks the font for it). Lines that fit come back
    unchanged."""
    if len(line) <= max_chars:
        return [line]
    lead = len(line) - len(line.lstrip())
    words = line.split()
    pieces: list[str] = []  # options glued to their values: "--set model.x=1"
    for w in words:
        if pieces and not w.startswith("-") and pieces[-1].startswith("-") and " " not in pieces[-1]:
            pieces[-1] += " " + w
        else:
            pieces.append(w)
    out, cur = [], " " * lead + pieces[0]
    for p in pieces[1:]:
        if len(cur) + 1 + len(p) + 2 <= max_chars:
            cur += " " + p
        else:
            out.append(cur + " \\")
            cur = " " * (lead + indent) + p
    return out + [cur]


def _block_height(pdf, b: tuple, width: float, font_size: float, fig_scale: float = 1.0) -> float:
    """A rough height (mm) of the first part of block ``b``: what must fit below a heading. A short code
    block (``KEEP_CODE_LINES`` lines or fewer) counts whole: a command stays with its section."""
    if b[0] == "img" and b[1] is not None:
        from PIL import Image
        with Image.open(b[1]) as im:
            w, h = im.size
        return width * _img_frac(w / h) * fig_scale * h / w + 6
    if b[0] == "code" and len(b[1]) <= KEEP_CODE_LINES:
        return _code_height(pdf, b[1], width, font_size)
    return font_size * 0.45 * 3  # three lines of text or table rows


def _img_frac(aspect: float) -> float:
    """The share of the text width a figure of ``aspect`` (width / height) gets: wide multi-panel
    figures the most, so their 7 pt labels print at about 6 pt."""
    return 0.8 if aspect > 2.2 else 0.55


KEEP_CODE_LINES = 12  # a code block this short is never split across pages
SPARSE_LAST_PAGE = 0.6  # a last page filled less than this share is worth trying a tighter layout for
TIGHTEN_TO_SAVE_A_PAGE = 1.0  # points of text size given up, at most, to save a page


def to_pdf(blocks: list[tuple], path: Path, font_size: float = 8.5, max_pages: int | None = MAX_PAGES,
           layout: list | None = None) -> int:
    """Render with fpdf2; returns the page count.

    Text is set left-aligned (monospace is never justified) in DejaVu Sans / Sans Mono; long commands
    wrap at argument boundaries (``wrap_command``); a heading moves to the next page when the start of
    what follows it (three lines, a whole figure, a whole short code block) would not fit below it, and
    a figure never leaves its caption behind. Laid out to the content: tighter layouts (text 0.5 pt
    smaller and figures 7.5 % smaller per step, ``_tightenings``) are tried where the result runs past
    ``max_pages`` (down to 6.5 pt) or its last page is less than ``SPARSE_LAST_PAGE`` full (down to
    ``TIGHTEN_TO_SAVE_A_PAGE`` pt smaller), and the first that fits with one page fewer is kept.
    ``layout``, if given, receives one ``(kind, page, y_mm)`` per block, where the block starts."""
    chosen = None
    for size, scale in _tightenings(font_size):
        lay: list = []
        pdf, fill = _render(blocks, size, scale, lay)
        fits = max_pages is None or pdf.pages_count <= max_pages
        if chosen is None:
            chosen, first_fill = (pdf, lay, fits), fill
        elif fits and (not chosen[2] or pdf.pages_count < chosen[0].pages_count):
            chosen = (pdf, lay, fits)
            break
        elif not chosen[2]:  # nothing fits yet: keep the tightest
            chosen = (pdf, lay, fits)
        if chosen[2] and (chosen[0].pages_count == 1 or first_fill >= SPARSE_LAST_PAGE
                          or font_size - size >= TIGHTEN_TO_SAVE_A_PAGE):
            break
    pdf, lay, _ = chosen
    if layout is not None:
        layout[:] = lay
    pdf.output(str(path))
    return pdf.pages_count


def _tightenings(font_size: float) -> list[tuple[float, float]]:
    """(text size, figure scale) from the given layout to the tightest readable one (6.5 pt)."""
    steps = max(0, int((font_size - 6.5) / 0.5 + 1e-9))
    return [(font_size - 0.5 * k, 1.0 - 0.075 * k) for k in range(steps + 1)]


def _render(blocks: list[tuple], font_size: float, fig_scale: float, layout: list):
    """One layout of ``blocks``: the FPDF document and how full its last page is (0..1)."""
    from fpdf import FPDF
    pdf = FPDF(format="A4")
    fonts = _fonts(pdf)
    pdf.set_margins(12, 10, 12)
    pdf.set_auto_page_break(True, margin=10)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    for i, b in enumerate(blocks):
        kind = b[0]
        if kind in ("title", "h") and i + 1 < len(blocks):  # keep a heading with what follows it
            need = 7 + _block_height(pdf, blocks[i + 1], width, font_size, fig_scale)
            if pdf.get_y() + need > pdf.page_break_trigger:
                pdf.add_page()
        whole = _whole_height(pdf, b, width, font_size, fig_scale)  # a figure with its caption, a short code block
        if whole and pdf.get_y() + whole > pdf.page_break_trigger and whole < pdf.page_break_trigger - pdf.t_margin:
            pdf.add_page()
        layout.append((kind, pdf.page, pdf.get_y()))
        if kind == "title":
            pdf.set_font(fonts[0], "B", font_size + 5)
            pdf.multi_cell(width, 7, b[1], align="L", **NL)
        elif kind == "h":
            pdf.ln(1.5)
            pdf.set_font(fonts[0], "B", font_size + 2)
            pdf.multi_cell(width, 5.5, b[1], align="L", **NL)
        elif kind == "p":
            pdf.ln(0.8)
            _draw_runs(pdf, fonts, font_size, paragraph_runs(b[1], len(b) > 2 and b[2]))
        elif kind == "table":
            _draw_table(pdf, fonts[0], font_size - 1, b[1], b[2], width)
        elif kind == "img" and b[1] is not None:
            _draw_image(pdf, fonts[0], font_size, b[1], b[2], width, fig_scale)
        elif kind == "code":
            _draw_code(pdf, fonts[1], font_size, b[1], width)
    top, bottom = pdf.t_margin, pdf.page_break_trigger
    return pdf, (pdf.get_y() - top) / (bottom - top)


def paragraph_runs(text: str, marked: bool = False) -> list[tuple[str, str]]:
    """A paragraph as ``(style, text)`` runs; style holds ``B`` (bold), ``I`` (italic), ``M`` (monospace).
    ``marked`` text is ``markdown_blocks``' paragraph format: ``**`` toggles bold, ``__`` italic, a
    backtick monospace, and a backslash makes the next marker (or backslash) literal. Plain text (the
    report's own) has only its backtick spans set in monospace."""
    if not marked:
        parts = text.split("`")
        if len(parts) % 2 == 0:  # an unpaired backtick: print as written
            return [("", text)]
        return [("M" if i % 2 else "", p) for i, p in enumerate(parts) if p]
    runs, cur, style, i = [], [], set(), 0
    toggles = {"**": "B", "__": "I", "`": "M"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            lit = text[i + 1:i + 3] if text[i + 1:i + 3] in ("**", "__", "--", "~~") else text[i + 1]
            cur.append(lit)
            i += 1 + len(lit)
            continue
        marker = text[i:i + 2] if text[i:i + 2] in toggles else text[i] if text[i] == "`" else None
        if marker is None:
            cur.append(text[i])
            i += 1
            continue
        if cur:
            runs.append(("".join(sorted(style)), "".join(cur)))
            cur = []
        style ^= {toggles[marker]}
        i += len(marker)
    if cur:
        runs.append(("".join(sorted(style)), "".join(cur)))
    return runs


BREAK_AFTER = "/._"  # where a word wider than a whole line may be broken: paths, dotted keys, snake_case


def paragraph_lines(runs: list[tuple[str, str]], width: float, measure) -> list[list[tuple[str, str]]]:
    """The lines of a left-aligned paragraph of ``(style, text)`` runs (``paragraph_runs``) in ``width``,
    each line as its runs. Lines break at spaces (and at a newline) only: a word, which may span runs
    (a code span and the comma after it are one), goes whole to the next line when it does not fit what is left of
    this one; a word wider than a whole line is broken only after ``/``, ``.`` or ``_`` (between
    characters only where a piece between those is itself wider than a line). ``measure(style, text)``
    is the width of ``text`` in ``style``'s font, in ``width``'s unit. Spaces at a break are dropped."""
    import re
    lines: list[list[tuple[str, str]]] = []
    line: list[tuple[str, str]] = []
    x, space = 0.0, None  # the space before the next word, as (style, text)

    def width_of(pieces):
        return sum(measure(st, t) for st, t in pieces)

    def place(pieces, w):
        nonlocal x
        line.extend(pieces)
        x += w

    def new_line():
        nonlocal line, x
        lines.append(line)
        line, x = [], 0.0

    def set_word(word):
        nonlocal space
        gap = measure(*space) if space and line else 0.0
        w = width_of(word)
        if x + gap + w <= width or (not line and w <= width):
            if gap:
                place([space], gap)
            place(word, w)
        elif w <= width:
            new_line()
            place(word, w)
        else:
            for chunk in _word_chunks(word, width, measure):
                cw = width_of(chunk)
                if line and x + gap + cw > width:
                    new_line()
                    gap = 0.0
                if gap:
                    place([space], gap)
                place(chunk, cw)
                gap = 0.0
        space = None

    word: list[tuple[str, str]] = []
    for style, text in runs:
        for part in re.split(r"( +|\n)", text):
            if not part:
                continue
            if part[0] not in " \n":
                word.append((style, part))
                continue
            if word:
                set_word(word)
                word = []
            if part == "\n":
                new_line()
                space = None
            else:
                space = (space[0], space[1] + part) if space else (style, part)
    if word:
        set_word(word)
    if line:
        lines.append(line)
    return [_merged(ln) for ln in lines]


def _word_chunks(word: list[tuple[str, str]], width: float, measure) -> list[list[tuple[str, str]]]:
    """``word``'s pieces between the points where it may be broken: after each ``BREAK_AFTER`` character;
    a piece wider than ``width`` is broken into characters."""
    chunks, cur = [], []
    for style, text in word:
        start = 0
        for i, ch in enumerate(text):
            if ch in BREAK_AFTER:
                cur.append((style, text[start:i + 1]))
                chunks.append(cur)
                cur, start = [], i + 1
        if start < len(text):
            cur.append((style, text[start:]))
    if cur:
        chunks.append(cur)
    out = []
    for chunk in chunks:
        if sum(measure(st, t) for st, t in chunk) <= width:
            out.append(chunk)
        else:
            out += [[(st, ch)] for st, t in chunk for ch in t]
    return out


def _merged(line: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Adjacent runs of one style as one."""
    out: list[tuple[str, str]] = []
    for style, text in line:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + text)
        else:
            out.append((style, text))
    return out


def _draw_runs(pdf, fonts: tuple[str, str], size: float, runs: list[tuple[str, str]]) -> None:
    """A left-aligned paragraph across the text width (inset by the cell margin, as a ``multi_cell``'s
    text is), each run in its font (``M``: DejaVu Sans Mono), broken into lines by ``paragraph_lines``:
    a code span or path is never split mid-word."""
    h = size * 0.45

    def font(style):
        pdf.set_font(fonts[1] if "M" in style else fonts[0], style.replace("M", ""), size)

    def measure(style, text):
        font(style)
        return pdf.get_string_width(text)

    inset = pdf.c_margin
    lines = paragraph_lines(runs, pdf.w - pdf.l_margin - pdf.r_margin - 2 * inset, measure)
    pdf.c_margin = 0  # each run's cell exactly as wide as its text
    try:
        for line in lines:
            if pdf.get_y() + h > pdf.page_break_trigger:
                pdf.add_page()
            pdf.set_x(pdf.l_margin + inset)
            for style, text in line:
                font(style)
                pdf.cell(pdf.get_string_width(text), h, text)
            pdf.ln(h)
    finally:
        pdf.c_margin = inset
    if not lines:
        pdf.ln(h)


def _draw_image(pdf, sans: str, font_size: float, img, caption: str, width: float, scale: float) -> None:
    """A figure centred, with a gap above (its white box never covers a table border), and its caption."""
    from PIL import Image
    with Image.open(img) as im:
        w = width * _img_frac(im.size[0] / im.size[1]) * scale
    pdf.ln(1.2)
    pdf.image(str(img), w=w, x=pdf.l_margin + (width - w) / 2)
    pdf.set_font(sans, "I", font_size - 1)
    pdf.multi_cell(width, font_size * 0.42, caption, align="L", **NL)


def _draw_table(pdf, sans: str, size: float, header: list, rows: list, width: float) -> None:
    """A table whose columns are at least as wide as their longest word (no word is split), the rest
    of the width shared by how much text each column holds; the font shrinks (to 5.5 pt) only where
    the longest words together are wider than the page."""
    from fpdf.fonts import FontFace
    padding = 0.8
    while True:
        pdf.set_font(sans, "", size)
        widths, whole = col_widths(pdf, [header, *rows], width, padding)
        if whole or size <= 5.5:
            break
        size -= 0.5
    with pdf.table(headings_style=FontFace(emphasis="BOLD"), line_height=(size + 1) * 0.45, text_align="LEFT",
                   padding=padding, col_widths=widths) as t:
        for row in [header, *rows]:
            r = t.row()
            for c in row:
                r.cell(str(c))


def col_widths(pdf, rows: list[list], width: float, padding: float) -> tuple[tuple[float, ...], bool]:
    """Column widths (mm, summing to ``width``) in the current font: each column at least its longest
    word in bold (the header row is bold) plus padding; what is left goes to the columns whose text
    is longer than that, in proportion to the excess (a column never gets more than its longest
    cell needs, unless every column has all it needs; a column that needs little more gets it first,
    then the rest is shared equally). The flag says whether every word fits whole; where the longest
    words together are wider than ``width``, the widths are in proportion to them."""
    family, size = pdf.font_family, pdf.font_size_pt
    pdf.set_font(family, "B", size)
    extra = 2 * padding + 0.6  # both paddings, the border line, rounding

    def longest(cells, split):
        return max(max((pdf.get_string_width(w) for w in (str(c).split() if split else [str(c)])), default=0)
                   for c in cells) + extra
    cols = list(zip(*rows))
    need = [longest(c, True) for c in cols]
    want = [max(n, longest(c, False)) for n, c in zip(need, cols)]
    pdf.set_font(family, "", size)
    if sum(need) > width:
        return tuple(n * width / sum(need) for n in need), False
    if sum(want) <= width:
        return tuple(w + (width - sum(want)) * w / sum(want) for w in want), True
    excess = [w - n for w, n in zip(want, need)]
    widths, free = list(need), width - sum(need)
    for k, i in enumerate(sorted(range(len(cols)), key=lambda i: excess[i])):  # water-filling
        give = min(excess[i], free / (len(cols) - k))
        widths[i] += give
        free -= give
    return tuple(widths), True


def _whole_height(pdf, b: tuple, width: float, font_size: float, fig_scale: float) -> float:
    """The height (mm) of a block that must not split across pages: a figure with its caption, a code
    block of ``KEEP_CODE_LINES`` lines or fewer; 0 for any other block."""
    if b[0] == "img" and b[1] is not None:
        from PIL import Image
        with Image.open(b[1]) as im:
            w = width * _img_frac(im.size[0] / im.size[1]) * fig_scale
            h = w * im.size[1] / im.size[0]
        pdf.set_font("DejaVu", "I", font_size - 1)
        lines = len(pdf.multi_cell(width, font_size * 0.42, b[2], dry_run=True, output="LINES"))
        return 1.2 + h + lines * font_size * 0.42
    if b[0] == "code" and len(b[1]) <= KEEP_CODE_LINES:
        return _code_height(pdf, b[1], width, font_size)
    return 0.0


def _code_height(pdf, lines: list[str], width: float, font_size: float) -> float:
    """The height (mm) of a code block's wrapped lines, and the gap after it."""
    pdf.set_font("DejaVuMono", "", font_size - 2)
    max_chars = int(width / pdf.get_string_width("m"))
    return sum(len(wrap_command(line, max_chars)) for line in lines) * font_size * 0.4 + 1.8


def _draw_code(pdf, mono: str, font_size: float, lines: list[str], width: float) -> None:
    """Monospace lines, long commands wrapped (``wrap_command``); a block longer than ``KEEP_CODE_LINES``
    (a shorter one is kept whole, ``_whole_height``) leaves at least two lines for the next page."""
    size = font_size - 2
    pdf.ln(0.8)  # clear of a table border above
    pdf.set_font(mono, "", size)
    h = font_size * 0.4
    max_chars = int(width / pdf.get_string_width("m"))
    parts = [p for line in lines for p in wrap_command(line, max_chars)]
    room = lambda n: pdf.get_y() + n * h <= pdf.page_break_trigger  # noqa: E731
    for i, part in enumerate(parts):
        if i == len(parts) - 2 and not room(2) and i > 0:
            pdf.add_page()  # no single line alone at the top of a page
        fit = min(size, size * width / max(pdf.get_string_width(part) * 1.01, 1e-6))
        pdf.set_font(mono, "", fit)  # a single word wider than the line: smaller, never split
        pdf.cell(width, h, part, align="L", **NL)
        pdf.set_font(mono, "", size)
    pdf.ln(1.0)  # a gap before whatever follows, another code block included


def markdown_blocks(text: str, base: Path | None = None) -> list[tuple]:
    """The subset of Markdown our notes use -> report blocks: '#' titles and '##'-'####' headings,
    paragraphs, bullets ('- ', '* ', printed as '•') and numbered items, pipe tables, fenced code,
    and a line holding only ``![caption](file.png)`` as the figure itself (``file`` relative to ``base``, the note's folder; a missing file stays as its caption).
    Links become their text. In paragraphs ``**bold**`` and ``*italic*`` are kept, as a third element
    ``True``: the text is then fpdf2 markdown (``**``, ``__``), every other marker escaped so that
    ``--set`` prints as such; headings, tables and captions are flattened to plain text."""
    import re
    figure = re.compile(r"^\s*!\[([^\]]*)\]\(([^)\s]+)\)\s*$")
    bold = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
    italic = re.compile(r"(?<![\w*])\*(\S(?:[^*]*\S)?)\*(?![\w*])")  # not a * b, runs/*

    def unlink(t: str) -> str:
        return re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", t).replace("`", "")  # [text](link) -> text

    def plain(t: str) -> str:
        return italic.sub(r"\1", bold.sub(r"\1", unlink(t)))

    def escaped(t: str) -> str:  # literal text for fpdf2's markdown
        t = t.replace("\\", "\\\\")
        return re.sub(r"(\*\*|__|--|~~)", r"\\\1", t)

    def spans(t: str, pattern, marker: str, inner) -> str:  # each match wrapped in fpdf2's marker
        out, pos = [], 0
        for m in pattern.finditer(t):
            out += [inner(t[pos:m.start()]), marker, inner(m.group(1)), marker]
            pos = m.end()
        return "".join(out + [inner(t[pos:])])

    def marked(t: str) -> str:  # bold outside, italics inside it too: **a *b* c**; `code` in monospace
        codes: list[str] = []  # each code span held aside (a private-use placeholder) while the rest is marked
        t = re.sub(r"`([^`]+)`", lambda m: f"\ue000{codes.append(m.group(1)) or len(codes) - 1}\ue001", t)
        t = spans(unlink(t), bold, "**", lambda u: spans(u, italic, "__", escaped))
        return re.sub("\ue000(\\d+)\ue001", lambda m: "`" + escaped(codes[int(m.group(1))]) + "`", t)
    blocks, para, table, code = [], [], [], None
    lines = text.splitlines()

    def flush():
        if para:
            blocks.append(("p", marked(" ".join(para)), True))
            para.clear()
        if table:
            rows = [[plain(c.strip()).replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip().strip("|"))]
                    for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            for r in rows[1:]:
                if len(r) != len(rows[0]):
                    raise ValueError(f"a table row has {len(r)} cells where its header has {len(rows[0])} "
                                     f"(write a | inside a cell as \\|): | {' | '.join(r)} |")
            blocks.append(("table", rows[0], rows[1:]))
            table.clear()
    for line in lines:
        if code is not None:
            if line.startswith("```"):
                blocks.append(("code", code))
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code = []
        elif line.startswith("# "):
            flush()
            blocks.append(("title", plain(line[2:])))
        elif line.startswith(("## ", "### ", "#### ")):
            flush()
            blocks.append(("h", plain(line.lstrip("#").strip())))
        elif line.startswith("|"):
            if para:
                flush()
            table.append(line)
        elif not line.strip():
            flush()
        elif (fig := figure.match(line)) and base is not None and (base / fig.group(2)).is_file():
            flush()
            blocks.append(("img", base / fig.group(2), plain(fig.group(1))))
        elif line.startswith(("- ", "* ")):
            flush()
            para.append("• " + line[2:].strip())
        elif re.match(r"\d+[.)] ", line):  # a numbered item starts its own paragraph, as a bullet does
            flush()
            para.append(line.strip())
        else:
            if table:
                flush()
            para.append(line.strip())
    flush()
    return blocks


def note_to_pdf(md_path: str) -> int:
    """`reproscope note FILE.md`: the hand-written reproduction note as FILE.pdf, with the report's renderer."""
    src = Path(md_path)
    if not src.exists():
        raise ConfigError(f"{src}: no such note")
    out = src.with_suffix(".pdf")
    try:
        blocks = markdown_blocks(src.read_text(), base=src.parent)
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None
    pages = to_pdf(blocks, out, max_pages=None)
    previews = write_previews(out, src.stem) if any(out.parent.glob(f"{src.stem}-page*.png")) else None
    print(f"{out} ({pages} pages)" + (f"; page previews {src.stem}-page1.png ... renewed" if previews else ""))
    return 0


PREVIEW_DPI = 150


def write_previews(pdf_path: Path, stem: str = "report") -> list[Path] | None:
    """``<stem>-page1.png``, ... beside ``pdf_path``, one per page (pypdfium2, ``PREVIEW_DPI`` dpi, 256
    colours): the pages for a machine without a PDF viewer. Previews of pages the PDF no longer has are
    removed. Returns the files, or None (and removes every old preview) where pypdfium2 is missing."""
    import re
    folder = pdf_path.parent
    old = {f for f in folder.glob(f"{stem}-page*.png") if re.fullmatch(rf"{re.escape(stem)}-page\d+\.png", f.name)}
    try:
        import pypdfium2 as pdfium
    except ImportError:
        made = None
    else:
        from PIL import Image
        made = []
        doc = pdfium.PdfDocument(str(pdf_path))
        try:
            for i, page in enumerate(doc, 1):
                image = page.render(scale=PREVIEW_DPI / 72).to_pil().convert("RGB")
                made.append(folder / f"{stem}-page{i}.png")
                image.quantize(256, method=Image.Quantize.FASTOCTREE).save(made[-1], optimize=True)
        finally:
            doc.close()
    for f in old - set(made or []):
        f.unlink(missing_ok=True)
    return made


def _own_figures(out: Path) -> set[str]:
    """The PNG files beside ``out/report.md`` that it shows (only those: nothing else there is touched)."""
    import re
    md = out / "report.md"
    text = md.read_text() if md.is_file() else ""
    return {m for m in re.findall(r"!\[[^\]]*\]\(([^)/\s]+\.png)\)", text)}


def report(run_dirs: list[str], out_dir: str | None = None) -> int:
    """Write ``report.md`` and ``report.pdf`` into ``out_dir`` (default ./report) from ``run_dirs``; every
    path in them is shown relative to the repository holding ``out_dir`` (else the current directory),
    or by its last components when outside it (``paths.display_path``), never as this machine's."""
    if not run_dirs:
        raise ConfigError("reproscope report: give at least one run directory")
    out = Path(out_dir) if out_dir else Path("report")
    base = report_base(out)
    runs = [load_run(p) for p in run_dirs]
    groups = group_runs(runs, base)
    command = "reproscope report " + " ".join(display_path(p, base) for p in run_dirs) + \
        (f" --out {display_path(out_dir, base)}" if out_dir else "")
    before = _own_figures(out)
    blocks = build_blocks(groups, out, command, base)
    (out / "report.md").write_text(to_markdown(blocks, out))
    for stale in before - _own_figures(out):  # a figure the previous report drew and this one does not
        (out / stale).unlink(missing_ok=True)
    pages = to_pdf(blocks, out / "report.pdf")
    print(f"{len(runs)} runs in {len(groups)} groups -> {out / 'report.md'}, {out / 'report.pdf'} ({pages} pages)")
    previews = write_previews(out / "report.pdf")
    print(f"page previews: {', '.join(str(p) for p in previews)}" if previews is not None else
          "page previews skipped: pypdfium2 is not installed (pip install pypdfium2 to get report-page1.png, ...)")
    for b in blocks:
        if b[0] == "p" and b[1].startswith("Measured difference"):
            print(b[1])
    return 0
