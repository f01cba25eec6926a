"""The ``reproscope`` command line. Subcommands are small functions; configuration comes from
the recipe dataclasses (``--set section.key=value``)."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, all_keys, apply_overrides, key_table
from .console import install_console
from .papers import PAPERS
from .recipes import DEFAULT_RECIPE, get_recipe, list_recipes, recipe_from_file
from .runfiles import METRICS, SUMMARY


def _add_recipe_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_RECIPE,
                     default_help: str = f"default: {DEFAULT_RECIPE}") -> None:
    p.add_argument("--recipe", default=default, help=f"registered recipe ({default_help})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=1e-3 (repeatable)")


def resolved_recipe(args):
    return apply_overrides(get_recipe(args.recipe), args.overrides)


def train_overrides(args) -> list[str]:
    """The ``--set`` strings with the train flags that stand for recipe keys (``--skip-corrupt``,
    ``--no-progress``) appended as the same strings: the one list a new run applies to the named recipe
    and a resume applies to the saved one, so a flag reaches the trainer either way."""
    flags = {"skip_corrupt": "data.skip_corrupt=true", "no_progress": "run.progress=false"}
    return [*args.overrides, *(s for flag, s in flags.items() if getattr(args, flag, False))]


def cmd_train(args) -> int:
    from .launch import train
    overrides = train_overrides(args)
    base = recipe_from_file(args.config, args.recipe) if args.config else get_recipe(args.recipe)
    recipe = apply_overrides(base, overrides)
    trainer, metrics = train(recipe, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
                             overrides=overrides if args.resume else None, download=args.download,
                             trust_pickle=args.trust_pickle, weights=args.weights, model_spec=args.model)
    rd, speak = trainer.run_dir, trainer.dist.is_main  # under torchrun, rank 0 alone speaks
    if trainer.tripped is not None:
        if speak:
            print(f"run stopped: {trainer.stop_reason}; see the report above and {rd / METRICS}")
        return 3
    import signal
    if trainer.signal is not None:  # the trainer printed the checkpoint and the resume command
        return 130 if trainer.signal == signal.SIGINT else 0
    if not speak:
        return 0
    from .train.run import format_summary
    if (rd / SUMMARY).is_file():
        import json
        print(format_summary(json.loads((rd / SUMMARY).read_text())))
    elif metrics:
        print(f"final val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}")
    print(f"view it with:  tensorboard --logdir {rd}   (--logdir {rd.parent} shows the runs beside it too)")
    return 0


def _parser_train(sub) -> None:
    """``reproscope train``'s arguments."""
    t = sub.add_parser("train", help="train a recipe")
    _add_recipe_args(t)
    t.add_argument("--config", default=None, metavar="FILE",
                   help="start from a file: a run's config.json, or a JSON/YAML mapping of overrides (flat "
                        "'optim.lr: 1e-3' or nested; 'recipe: NAME' picks the base); --set applies on top")
    t.add_argument("--run-dir", default=None, help="run directory (default: runs/<recipe>-<timestamp>)")
    t.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a checkpoint file, a run directory, or 'auto' (the highest-step checkpoint "
                        "listed in the run's manifest)")
    t.add_argument("--model", default=None, metavar="SPEC",
                   help="train your own model: package.module:factory, path/to/file.py:factory or timm:NAME, optionally "
                        "with constructor arguments (file.py:make:depth=4,dyt=true); it gets num_classes, img_size, "
                        "in_chans when it accepts them")
    t.add_argument("--weights", default=None, metavar="FILE",
                   help="start from these model weights (.safetensors, a state-dict .pt or a checkpoint)")
    t.add_argument("--trust-pickle", action="store_true",
                   help="unpickle --resume/--weights files that a weights-only load refuses (can run code)")
    t.add_argument("--overwrite", action="store_true", help="reuse an existing --run-dir")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--download", action="store_true",
                   help="download the dataset into data.root from its official address (checksums verified)")
    t.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images instead of stopping")
    t.set_defaults(fn=cmd_train)


def cmd_recipes(args) -> int:
    if args.action == "diff":
        from .recipes import deviation_log
        if not args.name:
            raise ConfigError("usage: reproscope recipes diff NAME")
        r = apply_overrides(get_recipe(args.name), args.overrides)
        rows = deviation_log(r)
        if not r.parent and not rows:
            print(f"{r.name} declares no parent paper recipe; nothing to compare")
            return 0
        print(f"{r.name} vs its parent {r.parent}: {len(rows)} fields differ")
        w = max([len(x["key"]) for x in rows] + [3])
        for x in rows:
            print(f"  {x['key']:<{w}}  {x['parent']!r} -> {x['value']!r}\n  {'':<{w}}  reason: {x['reason'] or 'NONE GIVEN'}")
        return 0
    if args.action == "show":
        if not args.name:
            raise ConfigError("usage: reproscope recipes show NAME [--set KEY=VALUE ...]")
        r = apply_overrides(get_recipe(args.name), args.overrides)
        print(r.to_json())
        return 0
    rows = [(r.name, r.description) for r in list_recipes()]
    w = max(len(n) for n, _ in rows)
    for n, d in rows:
        print(f"{n:<{w}}  {d}")
    return 0


def _parser_recipes(sub) -> None:
    """``reproscope recipes``'s arguments."""
    r = sub.add_parser("recipes", help="list recipes; `recipes show NAME`; `recipes diff NAME` (vs the paper recipe)")
    r.add_argument("action", nargs="?", default="list", choices=("list", "show", "diff"))
    r.add_argument("name", nargs="?")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.set_defaults(fn=cmd_recipes)


def cmd_models(args) -> int:
    from .diagnostics.models_table import print_models_table
    print_models_table(flops=not args.no_flops)
    return 0


def _parser_models(sub) -> None:
    """``reproscope models``'s arguments."""
    m = sub.add_parser("models", help="registered models with parameter counts and the papers' numbers")
    m.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    m.set_defaults(fn=cmd_models)


def _model_factory(args, recipe):
    """``--model SPEC`` as a Trainer ``model_factory`` (None: the recipe's registered model)."""
    if not getattr(args, "model", None):
        return None
    from .model.spec import factory_for
    return factory_for(args.model, recipe.data.img_size)


def cmd_plan(args) -> int:
    from .diagnostics.plan import plan, print_plan
    if args.fit is not None:
        return _plan_fit(args)
    for flag, value in (("--paper", args.paper), ("--dataset", args.dataset), ("--write-script", args.write_script)):
        if value is not None:
            raise ConfigError(f"{flag} goes with --fit HOURS (plan --fit 24 --paper dyt); without --fit, plan times "
                              f"--recipe NAME")
    args.recipe = args.recipe or DEFAULT_RECIPE
    recipe = resolved_recipe(args)
    print_plan(recipe, plan(recipe, args.hours, args.steps, model_factory=_model_factory(args, recipe)),
               model_label=args.model)
    return 0


def _parser_plan(sub) -> None:
    """``reproscope plan``'s arguments."""
    pl = sub.add_parser("plan", help="time real training steps here and budget a run (with an L4 estimate)")
    _add_recipe_args(pl, default=None)
    pl.add_argument("--hours", type=float, default=24.0, help="budget in hours (default 24)")
    pl.add_argument("--model", default=None, metavar="SPEC", help="plan your own model (file.py:factory, "
                    "package.module:factory, timm:NAME or a registered name)")
    pl.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    pl.add_argument("--fit", type=float, default=None, metavar="HOURS",
                    help="propose the most faithful campaign for --paper that fits HOURS L4 device-hours")
    pl.add_argument("--paper", default=None, choices=tuple(PAPERS), help="with --fit")
    pl.add_argument("--dataset", default=None, help="with --fit: imagenet-100, imagenette, tiny-imagenet, cifar100, "
                    "cifar10 (default: the planner chooses)")
    pl.add_argument("--write-script", default=None, metavar="FILE", help="with --fit: write the runs as a shell script")
    pl.set_defaults(fn=cmd_plan)


def _plan_fit(args) -> int:
    from pathlib import Path

    from .diagnostics.budget import DATASETS, BudgetError, fit
    from .diagnostics.plan import campaign_script, print_campaign
    if args.paper not in PAPERS:
        raise ConfigError(f"plan --fit needs --paper, one of {', '.join(PAPERS)}")
    names = [d.name for d in DATASETS] + [d.subset for d in DATASETS]
    if args.dataset is not None and args.dataset not in names:
        raise ConfigError(f"--dataset {args.dataset!r}: choose one of {', '.join(d.name for d in DATASETS)}")
    import math
    if not math.isfinite(args.fit) or args.fit <= 0:
        raise ConfigError(f"--fit {args.fit:g}: give the budget in device-hours, e.g. --fit 24")
    for flag, given in (("--recipe", args.recipe is not None), ("--hours", args.hours != 24.0),
                        ("--model", args.model is not None), ("--set", bool(args.overrides))):
        if given:
            raise ConfigError(f"{flag} does not apply to plan --fit, which chooses the recipes itself; "
                              f"drop {flag}, or use plan --recipe NAME without --fit")
    try:
        c = fit(args.paper, args.fit, args.dataset)
    except BudgetError as e:
        raise ConfigError(str(e)) from None
    print_campaign(c, args.fit, args.dataset)
    if args.write_script:
        path = Path(args.write_script)
        path.write_text(campaign_script(c, args.fit))
        path.chmod(0o755)
        print(f"wrote {path}: the runs as reproscope train commands, then the report; run it from the repository "
              f"root with: sh {path}")
    return 0


def cmd_profile(args) -> int:
    from pathlib import Path

    from .diagnostics.profile import print_summary, run_profile
    from .train.rundir import new_run_dir, prepare_run_dir
    recipe = apply_overrides(resolved_recipe(args), {"run.progress": False})
    if not args.with_instrument:  # profile the training step itself, not the probe steps
        recipe = apply_overrides(recipe, {"instrument.enabled": False})
    rd = Path(args.run_dir) if args.run_dir else new_run_dir(recipe.run.out_dir, f"profile-{recipe.name}")
    prepare_run_dir(rd, resume=False, overwrite=args.overwrite)
    print_summary(run_profile(recipe, rd, steps=args.steps, model_factory=_model_factory(args, recipe)), rd / "profile")
    return 0


def _parser_profile(sub) -> None:
    """``reproscope profile``'s arguments."""
    pf = sub.add_parser("profile", help="profile training steps: TensorBoard + Perfetto traces and a summary")
    _add_recipe_args(pf)
    pf.add_argument("--steps", type=int, default=5, help="profiled steps after 2 warm-up steps (default 5)")
    pf.add_argument("--model", default=None, metavar="SPEC", help="profile your own model (file.py:factory, "
                    "package.module:factory, timm:NAME or a registered name)")
    pf.add_argument("--run-dir", default=None)
    pf.add_argument("--overwrite", action="store_true")
    pf.add_argument("--with-instrument", action="store_true", help="keep the recipe's probes on while profiling")
    pf.set_defaults(fn=cmd_profile)


def cmd_diagnose(args) -> int:
    if args.check == "eval":
        from .diagnostics.evaluate import diagnose_eval
        if not args.checkpoint:
            raise ConfigError("usage: reproscope diagnose eval --checkpoint PATH [--recipe NAME] [--model SPEC] "
                              "[--data DIR]")
        overrides = list(args.overrides)
        if args.data and args.data.endswith(".pt"):
            raise ConfigError(f"--data {args.data}: diagnose eval needs the images themselves (an image folder with "
                              f"train/ and val/ class folders), not a tensor file")
        if args.data:
            overrides += ["data.dataset=imagefolder", f"data.root={args.data}"]
        recipe = get_recipe(args.recipe) if args.recipe else None  # None: the recipe the checkpoint carries
        return diagnose_eval(recipe, args.checkpoint, model_spec=args.model, overrides=overrides,
                             trust_pickle=args.trust_pickle, as_json=args.json)
    args.recipe = args.recipe or DEFAULT_RECIPE
    if args.check == "replay":
        from .diagnostics.replay import replay
        if not args.path:
            raise ConfigError("usage: reproscope diagnose replay PATH (a nonfinite-stepN.pt reproducer)")
        return replay(args.path, trust_pickle=args.trust_pickle)
    from .diagnostics.diagnose import diagnose
    return diagnose(resolved_recipe(args), args.check, args.model, args.json, args.out, args.bug, args.data,
                    quick=args.quick)


def _parser_diagnose(sub) -> None:
    """``reproscope diagnose``'s arguments."""
    dg = sub.add_parser("diagnose", help="run checks (`diagnose all`, `diagnose overfit-batch`, ...) or "
                                         "`diagnose replay PATH` to rerun a NaN reproducer")
    dg.add_argument("check", help="a check name, all, replay (a NaN reproducer) or eval (a trained checkpoint "
                                  "that scores near chance)")
    dg.add_argument("path", nargs="?", help="reproducer file for replay")
    dg.add_argument("--checkpoint", default=None, metavar="PATH",
                    help="for eval: the trained weights (reproscope checkpoint or run directory, state dict "
                         ".pt/.pth, .safetensors)")
    dg.add_argument("--trust-pickle", action="store_true",
                    help="unpickle a reproducer or checkpoint that a weights-only load refuses (can run code)")
    _add_recipe_args(dg, None, f"default: {DEFAULT_RECIPE}; for eval, the recipe the checkpoint or its run's "
                                "config.json carries")
    dg.add_argument("--model", default=None, metavar="SPEC", help="diagnose your own model: file.py:factory, "
                    "package.module:factory, timm:NAME or a registered name, optionally :KEY=VALUE,... constructor "
                    "arguments")
    dg.add_argument("--json", action="store_true", help="machine-readable output")
    dg.add_argument("--data", default=None, metavar="DIR|FILE.pt",
                    help="your data: an image folder with train/ and val/ class folders, or a .pt file holding "
                         "{'x': inputs, 'y': labels} (default: the recipe's data)")
    dg.add_argument("--bug", default=None, metavar="NAME",
                    help="plant a bug from the zoo first (`reproscope zoo` lists them), to see what the checks say")
    dg.add_argument("--out", default=None, metavar="DIR",
                    help="where figures go (contact sheet, lr sweep); default <run.out_dir>/diagnose-<recipe>")
    dg.add_argument("--quick", action="store_true",
                    help="the quick tier: the cheap checks (marked * below) with short budgets (fewer steps); "
                         "under a minute for a ViT-Ti-width model at 32 px on 2 CPU cores")
    dg.set_defaults(fn=cmd_diagnose)
    dg.format_help = lambda: argparse.ArgumentParser.format_help(dg) + "\n" + _checks_help()


def _checks_help() -> str:
    from .diagnostics.diagnose import checks_help  # imports torch: only when the help is shown
    return checks_help() + "\n"


def cmd_report(args) -> int:
    from .report.report import report
    return report(args.run_dirs, args.out)


def _parser_report(sub) -> None:
    """``reproscope report``'s arguments."""
    rp = sub.add_parser("report", help="report.md + report.pdf (<= 3 pages) from run directories: setup vs paper, "
                                       "results over seeds, the measured difference, curves, deviations, commands")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", default=None, metavar="DIR", help="output folder (default ./report)")
    rp.set_defaults(fn=cmd_report)


def cmd_note(args) -> int:
    from .report.report import note_to_pdf
    return note_to_pdf(args.path)


def _parser_note(sub) -> None:
    """``reproscope note``'s arguments."""
    nt = sub.add_parser("note", help="render a hand-written reproduction note (Markdown) as a PDF beside it")
    nt.add_argument("path", metavar="NOTE.md")
    nt.set_defaults(fn=cmd_note)


def cmd_audit(args) -> int:
    from .diagnostics.audit import run_audit
    return run_audit(args.run_dir, args.against, reasons=args.reasons)


def _parser_audit(sub) -> None:
    """``reproscope audit``'s arguments."""
    au = sub.add_parser("audit", help="hold a run's training loop (reproscope.watch or train) against a paper "
                                      "recipe: every deviation with its code and consequence; exit 1 on a likely mistake")
    au.add_argument("run_dir", metavar="RUN_DIR")
    au.add_argument("--against", default=None, metavar="RECIPE",
                    help="registered recipe, or a paper key (dyt, kat, mambaout) for that paper's recipe (default: "
                         "the run's against= / parent recipe)")
    au.add_argument("--reasons", default=None, metavar="FILE",
                    help="your deliberate deviations, a JSON or YAML mapping of key: reason (as watch(deviations=)): "
                         "declared rows carry the reason and are never likely mistakes")
    au.set_defaults(fn=cmd_audit)


def cmd_ablate(args) -> int:
    from .ablate import ablate
    return ablate(args.run_dir, args.keys, args.seeds, args.budget, args.all, args.dry_run)


def _parser_ablate(sub) -> None:
    """``reproscope ablate``'s arguments."""
    ab = sub.add_parser("ablate", help="measure what each deviation cost: revert each to the parent recipe's value, "
                                       "train it over seeds beside the run, report each effect with its 95 %% interval")
    ab.add_argument("run_dir", metavar="RUN_DIR", help="a run `reproscope train` wrote (a recipe or --model run)")
    ab.add_argument("--keys", default="auto", metavar="K1,K2|auto",
                    help="deviations to revert (default auto: every deviation but the scale, cheapest first within "
                         "--budget)")
    ab.add_argument("--seeds", type=int, default=3, help="seeds per arm, the base included (default 3)")
    ab.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="refuse a campaign estimated over this many minutes (the base run's measured time x runs)")
    ab.add_argument("--all", action="store_true", help="add one arm with every chosen key reverted at once")
    ab.add_argument("--dry-run", action="store_true", help="print the plan and its estimate; train nothing")
    ab.set_defaults(fn=cmd_ablate)


def cmd_runs(args) -> int:
    from .report.listing import list_runs
    return list_runs(args.folders)


def _parser_runs(sub) -> None:
    """``reproscope runs``'s arguments."""
    rn = sub.add_parser("runs", help="every run directory under the folders (default: runs), one line each: who "
                                     "trained it, model, steps, evaluations, top-1, how it ended, events")
    rn.add_argument("folders", nargs="*", default=["runs"], metavar="DIR")
    rn.set_defaults(fn=cmd_runs)


def cmd_compare(args) -> int:
    from .report.compare import compare
    return compare(args.run_a, args.run_b, args.rtol, args.out)


def _parser_compare(sub) -> None:
    """``reproscope compare``'s arguments."""
    cp = sub.add_parser("compare", help="config diff, metric table, the parting step (where the training losses part), "
                                        "and an overlay plot of two runs")
    cp.add_argument("run_a", metavar="RUN_A")
    cp.add_argument("run_b", metavar="RUN_B")
    cp.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance on the logged training loss")
    cp.add_argument("--out", default=None, metavar="DIR", help="where compare.png goes (default ./compare)")
    cp.set_defaults(fn=cmd_compare)


def cmd_align(args) -> int:
    import json

    from .diagnostics.align import align, format_result
    from .model.spec import with_args
    args.mine = with_args(args.mine, args.mine_arg, "--mine-arg")  # appended: they win over the spec's own
    args.ref = with_args(args.ref, args.ref_arg, "--ref-arg")
    r = align(args.mine, args.ref, img_size=args.img_size, num_classes=args.num_classes, batch=args.batch,
              seed=args.seed, atol=args.atol, rtol=args.rtol, train_mode=args.train_mode, map_path=args.map,
              out_dir=args.out, float32=args.float32)
    if args.json:
        print(json.dumps({**r.to_dict(), "agree": r.agree}, indent=1, default=str))
    else:
        print(format_result(r, args.mine, args.ref))
        print(f"mapping: {args.out}/map.json (edit it and pass it back with --map)")
    return 0 if r.agree else 1


KEYS_MEANING_MIN = 30  # narrowest meaning column beside the others; a narrower terminal gets it below its key


def _parser_align(sub) -> None:
    """``reproscope align``'s arguments."""
    al = sub.add_parser("align", help="hold your model against the reference layer by layer: match and copy weights, "
                                      "first module whose output differs, first gradient that differs")
    al.add_argument("mine", metavar="MINE", help="your model: file.py:factory, package.module:factory, timm:NAME or a "
                                                 "registered name, optionally with constructor arguments "
                                                 "(file.py:make:depth=4,dyt=true)")
    al.add_argument("ref", metavar="REF", help="the reference model, in the same forms (e.g. "
                                               "timm:vit_tiny_patch16_224:global_pool=avg,class_token=False)")
    al.add_argument("--mine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a constructor argument for MINE, appended to its spec (repeatable; a Python literal, "
                         "true/false/none, or text)")
    al.add_argument("--ref-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a constructor argument for REF, e.g. --ref-arg global_pool=avg --ref-arg class_token=False")
    al.add_argument("--img-size", type=int, default=224)
    al.add_argument("--num-classes", type=int, default=1000)
    al.add_argument("--batch", type=int, default=2)
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--atol", type=float, default=None, help="agree when max|a-b| <= atol + rtol * max|b| (default "
                                                              "1e-10 in float64, 1e-6 with --float32)")
    al.add_argument("--rtol", type=float, default=None, help="(default 1e-8 in float64, 1e-5 with --float32)")
    al.add_argument("--float32", action="store_true", help="keep the models in float32 (default: both in float64, so "
                                                           "rounding noise is ~1e-15)")
    al.add_argument("--train-mode", action="store_true", help="compare in train mode (the seed is reset before each "
                                                              "forward, so dropout masks match where drawn alike)")
    al.add_argument("--map", default=None, metavar="FILE.json", help="use this MINE -> REF tensor mapping (as written "
                                                                     "to --out, edited)")
    al.add_argument("--out", default="align", metavar="DIR", help="where map.json goes (default ./align)")
    al.add_argument("--json", action="store_true", help="machine-readable result")
    al.set_defaults(fn=cmd_align)


def cmd_keys(args) -> int:
    """Every key: name, accepted values, default, and its meaning wrapped to the terminal's width (100
    columns where that is unknown, as in a pipe), in a column of its own when at least
    ``KEYS_MEANING_MIN`` columns are left for it, else indented on the lines below the key."""
    if args.names:
        print("\n".join(all_keys()))
        return 0
    import shutil
    import textwrap
    rows = key_table()
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    width = shutil.get_terminal_size((100, 24)).columns
    for key, accepted, default, help_ in rows:
        head = f"{key:<{w[0]}}  {accepted:<{w[1]}}  default {default:<{w[2]}}  "
        wrap = dict(break_long_words=False, break_on_hyphens=False)
        if width - len(head) >= KEYS_MEANING_MIN:
            print("\n".join(textwrap.wrap(help_, width, initial_indent=head, subsequent_indent=" " * len(head),
                                          **wrap)) or head.rstrip())
        else:
            print("\n".join([head.rstrip(), *textwrap.wrap(help_, width, initial_indent="    ",
                                                           subsequent_indent="    ", **wrap)]))
    return 0


def _parser_keys(sub) -> None:
    """``reproscope keys``'s arguments."""
    k = sub.add_parser("keys", help="every configurable key with its accepted values, default and meaning")
    k.add_argument("--names", action="store_true", help="the key names only, one per line")
    k.set_defaults(fn=cmd_keys)


def cmd_zoo(args) -> int:
    from .checks.zoo import BUGS, CORRECT_RECIPES, get_bug
    from .diagnostics.zoo import zoo_table
    from .recipes import get_recipe
    bugs = [get_bug(b) for b in args.bug] if args.bug else BUGS
    recipes = () if args.no_correct else (args.correct or CORRECT_RECIPES)
    for name in recipes:  # a misspelt --correct fails now, not after the bug rows have run
        get_recipe(name)
    table, ok = zoo_table(bugs, recipes, model_spec=args.model, overrides=args.overrides)
    print(table)
    return 0 if ok else 1


def _parser_zoo(sub) -> None:
    """``reproscope zoo``'s arguments."""
    z = sub.add_parser("zoo", help="plant each classic bug in a correct recipe, run `diagnose all`, print the "
                                    "detection table (and check the built-in recipes for false alarms; a recipe with a known finding, "
                                    "e.g. dyt-convnext_tiny's slow start, must show exactly that finding)")
    z.add_argument("--bug", action="append", default=None, metavar="NAME", help="only these bugs (repeatable)")
    z.add_argument("--no-correct", action="store_true", help="skip the correct recipes")
    z.add_argument("--model", default=None, metavar="SPEC",
                   help="plant the bugs in your model (file.py:factory, module:factory, timm:NAME) on the zoo's data; "
                        "the first row is your model with nothing planted")
    z.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field for every row, e.g. --set data.img_size=64 (repeatable)")
    z.add_argument("--correct", action="append", default=None, metavar="RECIPE",
                   help="only these built-in recipes (repeatable; default: every built-in-data recipe)")
    z.set_defaults(fn=cmd_zoo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproscope", description=(
        "Train, instrument and diagnose re-implementations of vision papers; `reproscope COMMAND --help` "
        "describes each command, `reproscope keys` every --set key."))
    sub = p.add_subparsers(dest="command", required=True)

    _parser_train(sub)
    _parser_recipes(sub)
    _parser_models(sub)
    _parser_plan(sub)
    _parser_profile(sub)
    _parser_diagnose(sub)
    _parser_report(sub)
    _parser_note(sub)
    _parser_audit(sub)
    _parser_ablate(sub)
    _parser_runs(sub)
    _parser_compare(sub)
    _parser_align(sub)
    _parser_zoo(sub)
    _parser_keys(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_console()
    from .train.checkpoint import CheckpointError
    from .train.rundir import RunDirError
    try:
        status = args.fn(args)
        sys.stdout.flush()  # inside the try: a reader that left shows here, not as a traceback at exit
        return status
    except BrokenPipeError:  # `reproscope keys --names | head`: the reader left; no traceback
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, RunDirError, CheckpointError) as e:
        print(f"reproscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reproscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
