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

import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..model import list_models, model_info
from ..papers import PAPERS, Claim, figure_captions
from ..recipes import get_recipe
from ..runfiles import NOT_OBSERVED, observed
from ..train.events import Event
from .ablation import ablation_rows, plot_effects, read_ablation, unaffordable_sentence
from .document import (  # noqa: F401
    MAX_PAGES,
    markdown_blocks,
    note_to_pdf,
    paragraph_lines,
    paragraph_runs,
    to_markdown,
    to_pdf,
    wrap_command,
    write_previews,
)
from .paths import display_arg, display_path, report_base
from .report_figures import plot_curves, plot_grad_norms
from .runs import Group, RunRecord, group_runs, is_science, load_run, welch_interval
from .verdict import _matches, claim_pair, find_claim, verdict_sentences  # noqa: F401  (also the tests' import)


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
            from ..config import recipe_from_dict
            from ..model.build import build_model
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
