"""One record per paper: what the report tests, what the planner budgets, what the figures are called.

A :class:`PaperSpec` holds a paper's claim (its sentence, the config values that select the method's
and the baseline's runs, the paper's top-1 numbers, the relation and its tolerance), its plan (model
per size tier, the method, baseline and ablation variants ``reproscope plan --fit`` budgets) and the
captions of its analysis figures. ``reproscope report`` and ``reproscope plan`` read these records
and nothing else of a paper; adding a paper means its model file, its recipes (``recipes.py``) and
one ``register_paper(PaperSpec(...))`` here.

Numbers and sentences come from the papers (table cited in each claim):
DyT (Zhu et al., CVPR 2025) Table 1; KAT (Yang & Wang, ICLR 2025) Table 5; MambaOut (Yu & Wang, CVPR
2025) Table 1. The DyT tolerance is the paper's own LN-to-DyT gaps (+0.2, +0.5 points).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Claim:
    """What a paper claims of its method against a baseline, and how a measured interval is judged."""

    text: str
    method: dict  # config values that select the method's groups (a tuple value: any of them)
    baseline: dict  # ... and its baseline's
    paper_top1: tuple[float, float] | None = None  # the paper's (method, baseline) top-1; None: per norm (DyT)
    paper_models: str = ""  # the paper's models behind paper_top1, for the column header
    relation: str = "beats"  # what the paper claims of method vs baseline: "beats" or "matches or beats"
    tolerance: float = 1.0  # points of top-1: a smaller gap counts as "the two match" (report.verdict_sentences)
    tolerance_why: str = "one point of top-1"

    @property
    def paper_gap(self) -> float | None:
        """The paper's method minus baseline top-1, where the claim names one pair."""
        return None if self.paper_top1 is None else self.paper_top1[0] - self.paper_top1[1]


@dataclass(frozen=True)
class PaperPlan:
    """What a paper's claim needs: method and baseline model per size tier (paper's first), and the one
    ablation the claim hinges on (None: none is implemented). Each variant is (label, paper recipe, sets)."""

    paper: str
    tiers: tuple[tuple[str, str], ...]
    method: tuple[str, str, tuple[str, ...]]
    baseline: tuple[str, str, tuple[str, ...]]
    ablation: tuple[str, str, tuple[str, ...]] | None
    paper_models: str


@dataclass(frozen=True)
class PaperSpec:
    """A paper: its key (the recipes' prefix, ``dyt-vit_base-paper``), claim, plan and figure captions
    (``figures/<file>`` of a run -> what it shows, with the paper's figure number)."""

    key: str
    claim: Claim
    plan: PaperPlan
    figures: dict[str, str] = field(default_factory=dict)


PAPERS: dict[str, PaperSpec] = {}


def register_paper(spec: PaperSpec) -> PaperSpec:
    """Add ``spec`` under ``spec.key``.

    Raises:
        ValueError: a paper of that key is already registered.
    """
    if spec.key in PAPERS:
        raise ValueError(f"paper {spec.key!r} is already registered")
    PAPERS[spec.key] = spec
    return spec


def figure_captions() -> dict[str, str]:
    """Every registered paper's figure captions, by file name."""
    return {name: caption for spec in PAPERS.values() for name, caption in spec.figures.items()}


_PROBES_OVER_TRAINING = ("the paper-figure probes at init and after every epoch (KAT: rational input range against "
                         "the [-3, 3] fit range and GR-KAN Var[out]/Var[in]; MambaOut: gates near zero per stage)")

register_paper(PaperSpec(
    "dyt",
    Claim("Replacing every normalization layer with DyT(x) = γ · tanh(α x) + β matches or beats "
          "LayerNorm (paper, Table 1: ViT-B 82.3 → 82.5, ViT-L 83.1 → 83.6 ImageNet-1K top-1).",
          {"model.norm": "dyt", "model.dyt_squash": "tanh", "model.dyt_alpha0": 0.5}, {"model.norm": "ln"},
          relation="matches or beats", tolerance=0.5, tolerance_why="the paper's own LN-to-DyT gaps, +0.2 and +0.5"),
    PaperPlan("dyt", (("vit_base", "vit_base"), ("vit_small", "vit_small"), ("vit_tiny", "vit_tiny")),
              ("DyT", "dyt-vit_base-paper", ()), ("LayerNorm", "dyt-vit_base_ln-paper", ()),
              ("DyT with identity in place of tanh (Tab. 7)", "dyt-vit_base-paper", ("model.dyt_squash=identity",)),
              "ViT-B/16 (DyT vs LN)"),
    {"dyt_fig8_alpha.png": "DyT alpha against 1/std of each DyT layer's input over training (DyT Fig. 8)",
     "dyt_fig2_norm_curves.png": "norm-layer input vs output at the end of training (DyT Fig. 2/4)",
     "dyt_fig2_norm_curves_at_divergence.png": "norm-layer input vs output (DyT Fig. 2/4)"},
))
register_paper(PaperSpec(
    "kat",
    Claim("GR-KAN MLPs beat the GELU MLP of a ViT of the same size (paper, Table 5: DeiT-T 72.2 → KAT-T 74.6).",
          {"model.name": ("kat_tiny", "kat_quick"), "model.denominator": ("default", "paper")},
          {"model.name": ("vit_tiny", "vit_quick"), "model.norm": ("default", "ln")},
          (74.6, 72.2), "KAT-T / DeiT-T"),
    PaperPlan("kat", (("kat_tiny", "vit_tiny"),),
              ("KAT-T", "kat-kat_tiny-paper", ()), ("DeiT-T (GELU MLP)", "kat-kat_tiny-paper", ()),
              ("KAT-T with the public kernel's denominator", "kat-kat_tiny-paper", ("model.denominator=abs_terms",)),
              "KAT-T vs DeiT-T"),
    {"paper_probes_over_training.png": _PROBES_OVER_TRAINING,
     "kat_ranges_at_divergence.png": "rational input range against the [-3, 3] fit range, and GR-KAN "
                                     "Var[out]/Var[in] (KAT)"},
))
register_paper(PaperSpec(
    "mambaout",
    Claim("Gated CNN blocks without SSM (MambaOut-Femto, 78.9) beat DeiT-T (72.2) at similar size "
          "(paper, Table 1).", {"model.name": ("mambaout_femto", "mambaout_quick"), "model.kernel_size": 0},
          {"model.name": ("vit_tiny", "vit_quick"), "model.norm": ("default", "ln")},
          (78.9, 72.2), "MambaOut-Femto / DeiT-T"),
    PaperPlan("mambaout", (("mambaout_femto", "vit_tiny"),),
              ("MambaOut-Femto", "mambaout-mambaout_femto-paper", ()),
              ("DeiT-T", "mambaout-mambaout_femto-paper", ()), None, "MambaOut-Femto vs DeiT-T"),
    {"paper_probes_over_training.png": _PROBES_OVER_TRAINING},
))
