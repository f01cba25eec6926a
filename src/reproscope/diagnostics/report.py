"""`reproscope report RUN_DIR [RUN_DIR ...]`: the reproduction note's numbers, tables and figures.

Groups runs by variant (seeds are repeats), compares each method with its paper baseline, and
writes ``report.md`` and ``report.pdf`` (fpdf2; at most 3 pages) with PNG figures beside them.
The same list of content blocks feeds both renderers, so the two never disagree. Only reads run
directories.
"""

from __future__ import annotations

import math
import statistics
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..model import list_models, model_info
from ..recipes import get_recipe
from .paths import display_arg, display_path, report_base
from .report_figures import plot_curves, plot_grad_norms
from .runs import Group, RunRecord, group_runs, is_science, load_run, welch


@dataclass(frozen=True)
class Claim:
    text: str
    method: dict  # config values that select the method's groups (a tuple value: any of them)
    baseline: dict  # ... and its baseline's
    paper_top1: tuple[float, float] | None = None  # the paper's (method, baseline) top-1; None: per norm (DyT)
    paper_models: str = ""  # the paper's models behind paper_top1, for the column header


CLAIMS = {
    "dyt": Claim("Replacing every normalization layer with DyT(x) = γ · tanh(α x) + β matches or beats "
                 "LayerNorm (paper, Table 1: ViT-B 82.3 → 82.5, ViT-L 83.1 → 83.6 ImageNet-1K top-1).",
                 {"model.norm": "dyt", "model.dyt_squash": "tanh", "model.dyt_alpha0": 0.5}, {"model.norm": "ln"}),
    "kat": Claim("GR-KAN MLPs beat the GELU MLP of a ViT of the same size (paper, Table 5: DeiT-T 72.2 → KAT-T 74.6).",
                 {"model.name": ("kat_tiny", "kat_quick"), "model.denominator": ("default", "paper")},
                 {"model.name": ("vit_tiny", "vit_quick"), "model.norm": ("default", "ln")},
                 (74.6, 72.2), "KAT-T / DeiT-T"),
    "mambaout": Claim("Gated CNN blocks without SSM (MambaOut-Femto, 78.9) beat DeiT-T (72.2) at similar size "
                      "(paper, Table 1).", {"model.name": ("mambaout_femto", "mambaout_quick"), "model.kernel_size": 0},
                      {"model.name": ("vit_tiny", "vit_quick"), "model.norm": ("default", "ln")},
                      (78.9, 72.2), "MambaOut-Femto / DeiT-T"),
}
MAX_PAGES = 3
NL = {"new_x": "LMARGIN", "new_y": "NEXT"}  # fpdf2: every paragraph starts at the left margin on a new line


def _matches(g: Group, sel: dict) -> bool:
    f = g.first.flat_config()  # a key older runs' configs lack reads as its default
    return all(f.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in sel.items())


def find_claim(groups: list[Group], paper_key: str) -> Claim | None:
    """The claim whose method and baseline are both among the groups (else the recipe's paper's claim)."""
    for c in CLAIMS.values():
        if any(_matches(g, c.method) for g in groups) and any(_matches(g, c.baseline) for g in groups):
            return c
    return CLAIMS.get(paper_key)


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


def build_blocks(groups: list[Group], out: Path, command: str, base: Path | None = None) -> list[tuple]:
    """The report as blocks: ('h', text), ('p', text), ('table', header, rows), ('img', path, caption), ('code', lines).
    Paths (data root, model files, the runs' commands) are shown relative to ``base`` (default: the
    repository holding ``out``, else the current directory; ``paths.display_path``)."""
    base = base or report_base(out)
    runs = [r for g in groups for r in g.runs]
    first = runs[0]
    claim = find_claim(groups, first.recipe.split("-")[0])
    facts = paper_facts(first)
    blocks: list[tuple] = [("title", f"Reproduction report: {', '.join(sorted({r.recipe for r in runs}))}")]
    scale_note = ""
    if not any(r.env.get("gpus") for r in runs):
        scale_note = (" All runs here were trained on a CPU: this is a CPU-scale reproduction (smaller model, "
                      "resolution and schedule than the paper), not a GPU-scale one.")
    blocks += [("h", "Scope of reproducibility"), ("p", "The claim tested: " + (claim.text if claim else
                                                    "(no registered claim for this paper)") + scale_note),
               ("h", "Methodology"), ("p", _methodology(runs, base))]

    # setup: paper vs ours
    p = facts.get("recipe")
    rows = []

    def both(label, paper_val, ours):
        rows.append([label, str(paper_val), str(ours)])
    d = first.config["data"]
    both("data", f"{p.data.dataset} (1.28M train images)" if p else "-",
         f"{d['dataset']} ({display_path(d['root'], base) or 'built-in'})")
    both("model", p.model.name if p else "-", ", ".join(sorted({g.first.model_label(base) for g in groups})))
    both("resolution (px)", p.data.img_size if p else "-", d["img_size"])
    both("epochs", p.sched.epochs if p else "-", first.config["sched"]["epochs"])
    both("batch", p.data.batch_size if p else "-", d["batch_size"])
    both("images seen per run", f"{p.sched.epochs * 1.281e6 / 1e6:.0f}M" if p else "-",
         f"{first.config['sched']['epochs'] * first.images_per_epoch / 1e6:.2f}M "
         f"({first.images_per_epoch:,} per epoch)")
    hours = sum(r.device_hours for r in runs)
    both("device-hours (all runs)", "not stated", f"{hours:.2f} h on {first.device} ({len(runs)} runs; median "
                                                     f"epoch time x epochs)")
    both("precision", p.precision.amp if p else "-", first.config["precision"]["amp"])
    blocks += [("h", "Setup: paper vs ours"), ("table", ["", "paper", "ours"], rows)]

    # results
    res_rows = []
    for g in groups:
        m, s, n = g.mean_std("top1")
        norm = g.first.config["model"].get("norm", "default")
        if claim is not None and claim.paper_top1 is not None:  # the paper's method and baseline rows only
            paper_top1 = (claim.paper_top1[0] if _matches(g, claim.method) else
                          claim.paper_top1[1] if _matches(g, claim.baseline) else None)
        else:
            paper_top1 = facts.get("top1", {}).get(norm) if norm in ("ln", "dyt") else None
        if g.first.config["model"].get("dyt_squash", "tanh") != "tanh":
            paper_top1 = None
        seeds = ", ".join(f"{v:.2f}" for v in g.metric("top1"))
        incomplete = [r for r in g.runs if not r.complete]
        if incomplete:
            seeds += f" ({len(incomplete)} run(s) incomplete: last eval at epoch " \
                     f"{incomplete[0].val[-1]['epoch'] + 1 if incomplete[0].val else 0})"
        res_rows.append([g.label, f"{paper_top1:.1f}" if paper_top1 else "-",
                         f"{m:.2f} ± {s:.2f}" if n else "no eval", str(n), seeds])
    paper_col = (f"paper {claim.paper_models} (IN-1K)" if claim is not None and claim.paper_models else
                 f"paper {facts['model']} (IN-1K)" if facts else "paper")
    blocks += [("h", "Results (val top-1, %)"),
               ("table", ["variant", paper_col, "ours: mean ± std", "n", "per seed"], res_rows)]
    verdict = _verdict(groups, claim)
    if verdict:
        blocks.append(("p", verdict))
    ema_rows = [[g.label, f"{statistics.fmean(g.metric('raw_top1')):.2f}", f"{statistics.fmean(g.metric('ema_top1')):.2f}",
                 "EMA" if g.first.config.get("reg", {}).get("eval_ema") else "raw"]
                for g in groups if g.metric("raw_top1") and g.metric("ema_top1")]
    if ema_rows:
        blocks += [("p", "Raw and EMA weights, both evaluated at the end (mean over seeds; the results above "
                         "report the one reg.eval_ema names). A large gap means the EMA lags the run."),
                   ("table", ["variant", "raw top-1", "EMA top-1", "reported"], ema_rows)]

    blocks += [("h", "Reproducibility checklist"),
               ("table", ["item (NeurIPS / ACL checklists)", "this campaign"], _checklist(groups, runs))]
    blocks += [("h", "What was easy, what was difficult, communication with the authors"),
               ("p", "(fill in before sharing: edit report.md, then `reproscope note report.md` renders it. What "
                     "was easy to reproduce; what was difficult and why; whether the authors were contacted and "
                     "what they said; the development effort in plain words.)")]

    # curves
    out.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(groups, out / "curves.png")
    gn = plot_grad_norms(groups, out / "grad_norm.png")
    blocks += [("h", "Curves"), ("img", curves, "Train loss (left) and val top-1 (right): mean over seeds, "
                                                 "shaded min-max.")]

    # instrumentation
    blocks += [("h", "Instrumentation highlights")]
    ev_rows = []
    for r in runs:
        kinds: dict[str, int] = {}
        for e in r.events:
            kinds[e.get("type", "?")] = kinds.get(e.get("type", "?"), 0) + 1
        first_ev = next((e for e in r.events if e.get("type") == "nonfinite"), None)
        div = next((e for e in r.events if e.get("type") == "divergence"), None)
        notes = ([f"first non-finite at step {first_ev['step']} in {first_ev.get('module') or '?'}"] if first_ev else []) \
            + ([f"diverging from step {div['step']}: {div.get('reason', '')}"] if div else []) \
            + [f.get("sentence", "") for f in ((div or {}).get("findings") or {}).values()]
        ev_rows.append([r.name, str(kinds.get("nonfinite", 0)), str(kinds.get("divergence", 0)),
                        str(kinds.get("loss_spike", 0)), str(kinds.get("scaler_skip", 0)),
                        str(kinds.get("rollback", 0)), "; ".join(notes)])
    blocks.append(("table", ["run", "non-finite", "divergence", "loss spikes", "fp16 skips", "rollbacks", "note"],
                   ev_rows))
    blocks.append(("img", gn, "Global gradient norm (before clipping), mean over seeds."))
    diverged = [r for r in runs if any(e.get("type") == "divergence" for e in r.events)]
    for r in diverged[:2]:  # the paper-figure probes taken when the run was flagged: what blew up
        step = next(e["step"] for e in r.events if e.get("type") == "divergence")
        for fig in ("kat_ranges_at_divergence.png", "dyt_fig2_norm_curves_at_divergence.png"):
            src = r.path / "figures" / fig
            if src.exists():
                dst = out / f"{_slug(r.name)}-{fig}"
                shutil.copyfile(src, dst)
                blocks.append(("img", dst, f"{r.name}: {_FIG_CAPTIONS[fig]}, at step {step}, when the run was "
                                            f"flagged as diverging"))
    probe_groups = ([g for g in groups if claim and (_matches(g, claim.method) or _matches(g, claim.baseline))]
                    or groups)[:2]  # the method and its baseline: keeps the PDF within its page limit
    for g in probe_groups:
        for fig in ("dyt_fig8_alpha.png", "paper_probes_over_training.png", "dyt_fig2_norm_curves.png"):
            src = g.first.path / "figures" / fig
            if src.exists():
                dst = out / f"{_slug(g.label)}-{fig}"
                shutil.copyfile(src, dst)
                blocks.append(("img", dst, f"{g.label}: {_FIG_CAPTIONS[fig]} (run {g.first.name})"))
                break

    # deviations
    dev_rows = []
    seen = set()
    for g in groups:
        for dv in g.first.deviations:
            key = (dv["key"], str(dv["value"]))
            if not is_science(dv["key"]):  # seeds, threads, progress bars, probes: not deviations of the science
                continue
            if key not in seen:
                seen.add(key)
                code = dv.get("code", "value")  # a watched loop's audit: the code, and likely mistakes marked
                tag = f" [{code}{', likely mistake' if dv.get('mistake') else ''}]" if code != "value" else ""
                dev_rows.append([dv["key"], _shown_value(dv["parent"], base), _shown_value(dv["value"], base),
                                 dv.get("reason", "") + tag])
    blocks += [("h", f"Deviation log (against {first.config.get('parent') or 'no parent recipe'}; seeds, threads "
                     f"and other operational settings omitted)"),
               ("table", ["field", "paper", "ours", "reason"], dev_rows)]
    unseen = sorted({k for r in runs for k in r.not_observed})
    if unseen:
        blocks.append(("p", f"Not observed in the watched loop, so not compared (pass data= and ema= to "
                            f"reproscope.watch to show them): {', '.join(unseen)}."))
    elif any(r.config.get("name") == "watch" and not r.deviations for r in runs):
        blocks.append(("p", "A watched loop without paper=: run `reproscope audit RUN_DIR --against RECIPE` to "
                            "fill this log."))

    env = first.env
    blocks += [("h", "Environment"),
               ("p", f"python {env.get('python', '?')}, torch {env.get('torch', '?')}, torchvision "
                     f"{env.get('torchvision', '?')}, device {first.device}, CUDA {env.get('cuda') or '-'}, "
                     f"{env.get('platform', '?')}; git commit of each run: {_commits(runs)}.")]
    blocks += [("h", "Commands that reproduce every number"),
               ("code", [r.command_line(base) for r in runs] + [command])]
    return blocks


def _shown_value(value, base: Path) -> str:
    """A config value in a table: a path (data.root, a model file spec) as ``paths.display_arg`` shows it."""
    return display_arg(value, base) if isinstance(value, str) else str(value)


def _methodology(runs: list[RunRecord], base: Path) -> str:
    """Code used, reference consulted, data splits and preprocessing, from the run directories (the
    user's model files shown relative to ``base``)."""
    user = sorted({r.model_label(base) for r in runs if r.model_source})
    ours = sorted({r.config.get("model", {}).get("name", "?") for r in runs if not r.model_source})
    code = "; ".join(([f"reproscope's {', '.join(ours)}, written from the paper (the model file's docstring lists "
                       f"where it deviates)"] if ours else [])
                     + ([f"the user's own model {', '.join(user)}"] if user else []))
    d = runs[0].config["data"]
    split = ("the built-in shapes10 (train and val drawn from disjoint seeds)" if d["dataset"] == "shapes10" else
             f"{d['dataset']}, its standard train split for training and its standard validation split for every "
             f"number here")
    return (f"Code: {code}, trained by reproscope's Trainer. Reference repository consulted: (fill in: which, and "
            f"when). Data: {split}. Preprocessing: images resized to "
            f"{d.get('cache_res') or round(d['img_size'] / d.get('eval_crop_pct', 0.875))} px once (uint8 cache), "
            f"centre crop to {d['img_size']} px for evaluation, normalised by the training set's channel mean and "
            f"std; training augmentation as in config.json (aug.*).")


def _checklist(groups: list[Group], runs: list[RunRecord]) -> list[list[str]]:
    """The rows of the NeurIPS / ACL reproducibility checklists that the run directories answer."""
    params = []
    for g in groups:
        name = g.first.config.get("model", {}).get("name")
        if g.first.model_source is None and name in list_models():
            from ..model.build import build_model
            from ..config import recipe_from_dict
            from .models_table import build_for_counting
            try:
                r = recipe_from_dict(g.first.config)
                m = build_for_counting(lambda: build_model(r.model, r.data.num_classes or 10, r.data.img_size))
                params.append(f"{g.label}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M")
            except Exception:  # an old or hand-edited config: leave the count out rather than fail the report
                params.append(f"{g.label}: ?")
        else:
            params.append(f"{g.label}: see the model file")
    hours = sum(r.device_hours for r in runs)
    seeds = "; ".join(f"{g.label}: {len(g.runs)} (seeds {', '.join(str(r.seed) for r in g.runs)})" for g in groups)
    n_dev = len({dv["key"] for r in runs for dv in r.deviations if is_science(dv["key"])})
    return [["model parameters", "; ".join(params)],
            ["compute (all runs)", f"{hours:.2f} device-hours on {runs[0].device}; "
                                   f"{sum(r.images_seen for r in runs) / 1e6:.2f}M images seen"],
            ["number of runs", seeds],
            ["statistics", "mean ± standard deviation over seeds; the difference with a 95 % Welch interval"],
            ["splits", "train / val as in Methodology; no test set is used for any choice"],
            ["hyperparameters", f"the paper recipe's, {n_dev} changed (deviation log, with reasons); "
                                f"search: (fill in: none, or its bounds and trials)"]]


def _commits(runs: list[RunRecord]) -> str:
    by: dict[str, list[str]] = {}
    for r in runs:
        by.setdefault(str(r.env.get("git_commit", "?"))[:12], []).append(r.name)
    return "; ".join(f"{c} ({', '.join(n)})" for c, n in by.items())


_FIG_CAPTIONS = {"dyt_fig8_alpha.png": "DyT alpha against 1/std of each DyT layer's input over training (DyT Fig. 8)",
                 "dyt_fig2_norm_curves.png": "norm-layer input vs output at the end of training (DyT Fig. 2/4)",
                 "paper_probes_over_training.png": "the paper-figure probes at init and after every epoch (KAT: "
                                                   "rational input range against the [-3, 3] fit range and GR-KAN "
                                                   "Var[out]/Var[in]; MambaOut: gates near zero per stage)",
                 "dyt_fig2_norm_curves_at_divergence.png": "norm-layer input vs output (DyT Fig. 2/4)",
                 "kat_ranges_at_divergence.png": "rational input range against the [-3, 3] fit range, and GR-KAN "
                                                 "Var[out]/Var[in] (KAT)"}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_")


def _verdict(groups: list[Group], claim: Claim | None) -> str:
    if claim is None:
        return ""
    method = [g for g in groups if _matches(g, claim.method)]
    base = [g for g in groups if _matches(g, claim.baseline)]
    if not method or not base:
        return "The method and its baseline are not both among these runs: no difference to report."
    a, b = method[0].metric("top1"), base[0].metric("top1")
    if not a or not b:
        return "A method or baseline run has no evaluation yet."
    d, lo, hi = welch(a, b)
    ci = f"95% CI [{lo:+.2f}, {hi:+.2f}] (Welch t, n = {len(a)} + {len(b)})" if not math.isnan(lo) else \
        "no confidence interval (one seed per variant)"
    head = f"Measured difference, {method[0].label} minus {base[0].label}: {d:+.2f} points top-1, {ci}. "
    if math.isnan(lo):
        return head + "With one seed per variant this says little; run at least 3 seeds."
    if lo > 0:
        return head + "The method is better at this scale: the paper's claim holds here."
    if hi < 0:
        return head + ("The method is worse at this scale, beyond seed noise: the paper's 'matches or beats' does "
                       "not hold here. Check the deviation log before blaming the method: the scale differs.")
    return head + ("The interval contains 0: no difference resolved at this scale, which is consistent with "
                   "'matches' but cannot show 'beats'; with 3 seeds only differences larger than the interval's "
                   "half-width are detectable.")


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


def _block_height(pdf, b: tuple, width: float, font_size: float) -> float:
    """A rough height (mm) of the first part of block ``b``: what must fit below a heading."""
    if b[0] == "img" and b[1] is not None:
        from PIL import Image
        with Image.open(b[1]) as im:
            w, h = im.size
        return width * _img_frac(w / h) * h / w + 6
    return font_size * 0.45 * 3  # three lines of text or table rows


def _img_frac(aspect: float) -> float:
    """The share of the text width a figure of ``aspect`` (width / height) gets: wide multi-panel
    figures the most, so their 7 pt labels print at about 6 pt."""
    return 0.8 if aspect > 2.2 else 0.55


def to_pdf(blocks: list[tuple], path: Path, font_size: float = 8.5, max_pages: int | None = MAX_PAGES,
           layout: list | None = None) -> int:
    """Render with fpdf2; returns the page count (shrinks the text while it runs past ``max_pages``).

    Text is set left-aligned (monospace is never justified) in DejaVu Sans / Sans Mono; long commands
    wrap at argument boundaries (``wrap_command``); a heading moves to the next page when the start of
    what follows it (three lines, or the whole figure) would not fit below it. ``layout``, if given,
    receives one ``(kind, page, y_mm)`` per block, where the block starts."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace
    pdf = FPDF(format="A4")
    sans, mono = _fonts(pdf)
    pdf.set_margins(12, 10, 12)
    pdf.set_auto_page_break(True, margin=10)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    for i, b in enumerate(blocks):
        kind = b[0]
        if kind in ("title", "h") and i + 1 < len(blocks):  # keep a heading with what follows it
            need = 7 + _block_height(pdf, blocks[i + 1], width, font_size)
            if pdf.get_y() + need > pdf.page_break_trigger:
                pdf.add_page()
        if layout is not None:
            layout.append((kind, pdf.page, pdf.get_y()))
        if kind == "title":
            pdf.set_font(sans, "B", font_size + 5)
            pdf.multi_cell(width, 7, b[1], align="L", **NL)
        elif kind == "h":
            pdf.ln(1.5)
            pdf.set_font(sans, "B", font_size + 2)
            pdf.multi_cell(width, 5.5, b[1], align="L", **NL)
        elif kind == "p":
            pdf.ln(0.8)
            pdf.set_font(sans, "", font_size)
            pdf.multi_cell(width, font_size * 0.45, b[1], align="L", markdown=len(b) > 2 and b[2], **NL)
        elif kind == "table":
            pdf.set_font(sans, "", font_size - 1)
            widths = _col_widths([b[1], *b[2]])
            with pdf.table(headings_style=FontFace(emphasis="BOLD"), line_height=font_size * 0.45,
                           text_align="LEFT", padding=0.8, col_widths=widths) as t:
                for row in [b[1], *b[2]]:
                    r = t.row()
                    for c in row:
                        r.cell(str(c))
        elif kind == "img" and b[1] is not None:
            from PIL import Image
            with Image.open(b[1]) as im:
                w = width * _img_frac(im.size[0] / im.size[1])
            pdf.image(str(b[1]), w=w, x=pdf.l_margin + (width - w) / 2)
            pdf.set_font(sans, "I", font_size - 1)
            pdf.multi_cell(width, font_size * 0.42, b[2], align="L", **NL)
        elif kind == "code":
            size = font_size - 2
            pdf.set_font(mono, "", size)
            max_chars = int(width / pdf.get_string_width("m"))
            for line in b[1]:
                for part in wrap_command(line, max_chars):
                    fit = min(size, size * width / max(pdf.get_string_width(part) * 1.01, 1e-6))
                    pdf.set_font(mono, "", fit)  # a single word wider than the line: smaller, never split
                    pdf.cell(width, font_size * 0.4, part, align="L", **NL)
                    pdf.set_font(mono, "", size)
            pdf.ln(1.0)  # a gap before whatever follows, another code block included
    if max_pages and pdf.pages_count > max_pages and font_size > 6.5:
        if layout is not None:
            layout.clear()
        return to_pdf(blocks, path, font_size - 1, max_pages, layout)
    pdf.output(str(path))
    return pdf.pages_count


def _col_widths(rows: list[list[str]]) -> tuple[float, ...]:
    """Column widths in proportion to the longest cell (capped, so one long reason does not squeeze the rest)."""
    n = len(rows[0])
    return tuple(min(60, max(6, max(len(str(r[i])) for r in rows))) for i in range(n))


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

    def marked(t: str) -> str:  # bold outside, italics inside it too: **a *b* c**
        return spans(unlink(t), bold, "**", lambda u: spans(u, italic, "__", escaped))
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
    print(f"{out} ({pages} pages)")
    return 0


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
    for b in blocks:
        if b[0] == "p" and b[1].startswith("Measured difference"):
            print(b[1])
    return 0
