"""The loop audit: a user's own loop under ``reproscope.watch(against=...)``, held against a recipe.

A faithful loop (written here, following ``dyt-vit_tiny-cifar10-quick``'s optimizer, param groups,
schedule shape, batch, smoothing, mixing, drop path, EMA and bf16) gets only the deviations it really
has; each planted loop mistake gets its key and code; the schedules torch and timm write are read the
same from the lr curve.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import reproscope
from reproscope.cli import main
from reproscope.instrument.loop_audit import audit, recipe_facts
from reproscope.recipes import get_recipe

REF = "dyt-vit_tiny-cifar10-quick"  # lr 2.5e-4 at batch 256, 20/300 warmup, cosine, ls 0.1, mixup, dp 0.1, EMA, bf16
STEPS, EVAL_EVERY, K = 30, 10, 10


class DyT(nn.Module):
    """A DyT layer in a user's own style: scalar alpha, per-channel weight and bias."""

    def __init__(self, c):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 0.5))
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):  # [B, C, H, W]
        return torch.tanh(self.alpha * x) * self.weight[:, None, None] + self.bias[:, None, None]


class DropPath(nn.Module):
    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


class Block(nn.Module):
    def __init__(self, c, dp):
        super().__init__()
        self.norm, self.conv, self.drop_path = DyT(c), nn.Conv2d(c, c, 3, padding=1), DropPath(dp)

    def forward(self, x):
        return x + self.drop_path(self.conv(self.norm(x)))


class Net(nn.Module):
    def __init__(self, rates=(0.0, 0.05, 0.1)):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)  # [B, 3, 32, 32] -> [B, 8, 8, 8]
        self.blocks = nn.Sequential(*[Block(8, r) for r in rates])
        self.head = nn.Linear(8, K)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _soft(y, smoothing=0.1, mix=True, g=None):
    """Mixed, smoothed targets as timm's Mixup makes them: lam * onehot(y) + (1 - lam) * onehot(y.flip(0))."""
    off = smoothing / K
    one = F.one_hot(y, K).float() * (1 - smoothing) + off
    if not mix:
        return one, None
    lam = float(torch.distributions.Beta(0.8, 0.8).sample())
    return lam * one + (1 - lam) * one.flip(0), lam


def run_loop(tmp_path, *, batch=256, lr=2.5e-4, groups="paper", betas=(0.9, 0.999), sched="warmup-cosine",
             warmup=2, smoothing=0.1, mix=True, rates=(0.0, 0.05, 0.1), clip=0.0, ema_decay=0.9,
             eval_mode=True, shuffle=True, amp=torch.bfloat16, scaler=None, against=REF, steps=STEPS, name="run"):
    """A user's loop with every setting a parameter; the defaults follow ``REF`` (at 30 steps)."""
    torch.manual_seed(0)
    model = Net(rates)
    decay = [p for p in model.parameters() if p.ndim > 1]
    if groups == "paper":
        pg = [{"params": decay, "weight_decay": 0.05}, {"params": [p for p in model.parameters() if p.ndim <= 1],
                                                        "weight_decay": 0.0}]
    else:  # every parameter decayed
        pg = [{"params": list(model.parameters()), "weight_decay": 0.05}]
    opt = torch.optim.AdamW(pg, lr=lr, betas=betas, eps=1e-8)
    s = _schedule(opt, sched, warmup, steps)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    xs, ys = torch.randn(512, 3, 32, 32), torch.randint(0, K, (512,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=batch, shuffle=shuffle,
                                         drop_last=True)
    crit = nn.CrossEntropyLoss(label_smoothing=smoothing) if not mix else None
    run = tmp_path / name
    with reproscope.watch(model, opt, run_dir=run, against=against, ema=ema, data=loader, criterion=crit,
                          scaler=scaler, tensorboard=False) as w:
        step = 0
        while step < steps:
            for x, y in loader:
                model.train()
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    out = model(x)
                if mix:
                    t, _ = _soft(y, smoothing)
                    loss = torch.sum(-t * F.log_softmax(out.float(), -1), -1).mean()
                else:
                    t = y
                    loss = crit(out.float(), y)
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(opt)
                ok = w.step(loss, targets=t)
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                if ok:
                    (scaler.step(opt), scaler.update()) if scaler else opt.step()
                opt.zero_grad()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                if sched != "per-epoch" and s is not None:
                    s.step()
                elif s is not None and step % EVAL_EVERY == 0:
                    s.step()
                if step % EVAL_EVERY == 0:
                    evaluated = ema if ema is not None else model
                    evaluated.train(not eval_mode)
                    with torch.no_grad():
                        evaluated(xs[:64])
                    w.evaluate(top1=10.0)
                if step >= steps:
                    break
    return w, run


def _schedule(opt, kind, warmup, steps):
    sch = torch.optim.lr_scheduler
    if kind == "warmup-cosine":
        return sch.SequentialLR(opt, [sch.LinearLR(opt, 0.01, total_iters=warmup),
                                      sch.CosineAnnealingLR(opt, steps - warmup, eta_min=1e-6)], [warmup])
    if kind == "cosine":
        return sch.CosineAnnealingLR(opt, steps, eta_min=1e-6)
    if kind == "step":
        return sch.SequentialLR(opt, [sch.LinearLR(opt, 0.01, total_iters=warmup),
                                      sch.StepLR(opt, step_size=10, gamma=0.1)], [warmup])
    if kind == "per-epoch":
        return sch.CosineAnnealingLR(opt, steps // EVAL_EVERY, eta_min=1e-6)
    if kind == "onecycle":
        return sch.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps + 1)
    return None


def _rows(run):
    return json.loads((run / "deviations.json").read_text())


def _codes(result):
    return {(r["key"], r["code"]) for r in result["deviations"]}


def test_a_faithful_loop_gets_only_the_deviations_it_really_has(tmp_path):
    w, run = run_loop(tmp_path)
    res = _rows(run)
    # the loop really runs 15 epochs (2 batches each) where the recipe has 300, and an EMA of 0.9, not 0.999
    assert _codes(res) == {("sched.epochs", "value"), ("reg.ema_decay", "value")}, res["deviations"]
    facts = json.loads((run / "loop.json").read_text())["facts"]
    assert facts["optim.lr"] == pytest.approx(2.5e-4) and facts["sched.decay"] == "cosine"
    assert facts["sched.warmup_steps"] == 2 and facts["reg.label_smoothing"] == pytest.approx(0.1)
    assert facts["aug.mixing"] and facts["model.drop_path_rule"] == "linear" and facts["precision.amp"] == "bf16"
    assert facts["reg.eval_ema"] is True and facts["data.shuffle"] is True and facts["data.batch_size"] == 256
    assert facts["optim.decayed_no_decay"] == [] and facts["optim.grad_clip"] == 0.0
    cfg = json.loads((run / "config.json").read_text())  # the recipe's shape, listed as not observed where not shown
    assert cfg["parent"] == REF and cfg["optim"]["lr"] == pytest.approx(2.5e-4)
    assert "randaug_n" not in cfg["aug"] and "aug.randaug_n" in cfg["not_observed"] and cfg["trained_by"] == "watch"
    assert res["mistakes"] == 0


PLANTED = [
    (dict(groups="all"), "optim.weight_decay", "decay-on-1d-params"),
    (dict(sched="cosine"), "sched.warmup_epochs", "no-warmup"),
    (dict(warmup=12), "sched.warmup_epochs", "warmup-share"),  # 40 % of the run, 6x the paper's share
    (dict(sched="step"), "sched.decay", "sched-shape"),
    (dict(sched="per-epoch"), "sched.lr_changes_every", "lr-per-epoch"),
    (dict(betas=(0.9, 0.95)), "optim.beta1", "optim-betas"),
    (dict(batch=32, steps=40), "optim.lr", "lr-batch-ratio"),  # the paper's lr kept at 8x smaller batch
    (dict(smoothing=0.0), "reg.label_smoothing", "label-smoothing"),
    (dict(mix=False), "aug.mixup_alpha", "mixing-missing"),
    (dict(rates=(0.1, 0.1, 0.1)), "model.drop_path", "drop-path-rule"),
    (dict(clip=0.01), "optim.grad_clip", "grad-clip"),
    (dict(ema_decay=0.9999), "reg.ema_decay", "ema-too-slow"),
    (dict(eval_mode=False), "eval.train_mode", "eval-train-mode"),
    (dict(shuffle=False), "data.shuffle", "no-shuffle"),
    (dict(amp=torch.float16), "precision.amp", "fp16-no-scaler"),
]


@pytest.mark.parametrize("change, key, code", PLANTED, ids=[p[2] for p in PLANTED])
def test_each_planted_loop_mistake_is_named_with_its_key_and_code(tmp_path, change, key, code):
    w, run = run_loop(tmp_path, **change)
    res = _rows(run)
    hit = [r for r in res["deviations"] if r["code"] == code]
    assert hit and hit[0]["key"] == key and hit[0]["mistake"], res["deviations"]
    assert res["mistakes"] >= 1


def test_decay_on_alpha_names_alpha(tmp_path):
    _, run = run_loop(tmp_path, groups="all")
    row = next(r for r in _rows(run)["deviations"] if r["code"] == "decay-on-1d-params")
    assert "blocks.0.norm.alpha" in row["reason"] or "alpha" in row["reason"]
    details = json.loads((run / "loop.json").read_text())["details"]["optimizer"]
    assert details["rules"]["blocks.0.norm.alpha"] == "1-d"


def test_fp16_with_a_scaler_is_not_flagged(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    _, run = run_loop(tmp_path, amp=torch.float16, scaler=scaler)
    assert "fp16-no-scaler" not in {r["code"] for r in _rows(run)["deviations"]}


@pytest.mark.parametrize("sched, decay, warm", [("onecycle", "cosine", (7, 11)), ("warmup-cosine", "cosine", (2, 2)),
                                                ("cosine", "cosine", (0, 0))])
def test_schedules_are_read_from_the_lr_curve(tmp_path, sched, decay, warm):
    _, run = run_loop(tmp_path, sched=sched, against=None)
    facts = json.loads((run / "loop.json").read_text())["facts"]
    assert facts["sched.decay"] == decay and warm[0] <= facts["sched.warmup_steps"] <= warm[1], facts
    assert not (run / "deviations.json").exists()


def test_two_param_groups_and_a_hand_written_lr_update(tmp_path):
    """Two groups with their own lr (a layer-wise lr), the lr set by hand each step: both curves are read."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW([{"params": model.head.parameters(), "lr": 1e-3},
                             {"params": [p for n, p in model.named_parameters() if not n.startswith("head")],
                              "lr": 1e-4}], weight_decay=0.0)
    peaks = [1e-3, 1e-4]
    with reproscope.watch(model, opt, run_dir=tmp_path / "run", tensorboard=False) as w:
        for s in range(40):
            for g, peak in zip(opt.param_groups, peaks):
                g["lr"] = peak * min(1.0, (s + 1) / 5) * 0.5 * (1 + math.cos(math.pi * max(0, s - 5) / 35))
            x, y = torch.randn(8, 3, 32, 32), torch.randint(0, K, (8,))
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            w.step(loss, targets=y)
            opt.step()
            opt.zero_grad()
    loop = json.loads((tmp_path / "run" / "loop.json").read_text())
    assert loop["facts"]["sched.decay"] == "cosine" and loop["facts"]["sched.warmup_steps"] in (4, 5)
    assert [round(g["peak"], 6) for g in loop["details"]["lr_groups"]] == peaks
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("lr_group1" in r for r in rows)


def test_audit_cli_reads_a_watched_run_and_exits_1_on_a_mistake(tmp_path, capsys):
    _, run = run_loop(tmp_path, groups="all", against=None)
    assert main(["audit", str(run)]) == 2  # watched without against=: it says what to pass
    assert "--against" in capsys.readouterr().err
    assert main(["audit", str(run), "--against", REF]) == 1
    out = capsys.readouterr().out
    assert "decay-on-1d-params" in out and "likely mistake" in out
    assert _codes(_rows(run)) >= {("optim.weight_decay", "decay-on-1d-params")}


def test_audit_table_heads_the_recipes_column_with_its_name():
    """#49: a recipe without a paper (quickstart) is not headed "paper": the column takes the name of the
    recipe audited against, "recipe" without one, and a long name widens the column (rows stay aligned)."""
    from reproscope.diagnostics.audit import format_table
    row = {"key": "sched.epochs", "parent": 20, "value": 3, "code": "value", "mistake": False,
           "reason": "quickstart has 20; the loop 3"}
    for against, head in (("quickstart", "quickstart"), ("", "recipe"), (None, "recipe"),
                          ("a-recipe-name-of-thirty-chars", "a-recipe-name-of-thirty-chars")):
        result = {"deviations": [row], "not_observed": []}
        if against is not None:
            result["parent"] = against
        lines = format_table(result, width=100).splitlines()
        assert lines[0].split() == ["key", head, "yours", "code"]
        assert lines[2].split()[:4] == ["sched.epochs", "20", "3", "value"]
        assert lines[2].index("3 ") == lines[0].index("yours")


def test_report_shows_a_watched_runs_deviation_log(tmp_path):
    _, run = run_loop(tmp_path, sched="cosine")
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "no-warmup" in md and "not observed" in md


def test_recipe_audit_and_the_loop_audit_share_their_codes():
    """A recipe's own facts audited against itself: no deviation; the smells are the same function."""
    r = get_recipe(REF)
    assert audit(recipe_facts(r), r)["deviations"] == []


# --- #46: faults people hit with AMP and evaluation -----------------------------------------------------

def _scaled_loop(tmp_path, *, clip_first: bool, steps=12, name="amp"):
    """A fp32 CPU loop with a GradScaler at 2**16 that clips at 1.0, either before ``scaler.unscale_`` (on the
    scaled gradients: the threshold acts as 1 / 65536) or after it (as torch's AMP guide has it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, K))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert scaler.is_enabled()
    run = tmp_path / name
    with reproscope.watch(model, opt, run_dir=run, against=REF, scaler=scaler, tensorboard=False) as w:
        for _ in range(steps):
            x, y = torch.randn(16, 3, 8, 8), torch.randint(0, K, (16,))
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if clip_first:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.unscale_(opt)
            else:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            w.step(loss, targets=y)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    return run


def test_a_clip_before_scaler_unscale_is_named(tmp_path):
    run = _scaled_loop(tmp_path, clip_first=True)
    facts = json.loads((run / "loop.json").read_text())["facts"]
    assert facts["optim.grad_clip"] == pytest.approx(1.0 / 2 ** 16, rel=1e-3)
    assert facts["precision.scale_at_clip"] == 2.0 ** 16
    rows = [r for r in _rows(run)["deviations"] if r["code"] == "clip-before-unscale"]
    assert len(rows) == 1 and rows[0]["mistake"] and rows[0]["key"] == "optim.grad_clip"
    assert rows[0]["value"] == pytest.approx(1.0 / 2 ** 16, rel=1e-3)
    assert "scaler.unscale_(optimizer)" in rows[0]["reason"]


def test_a_clip_after_scaler_unscale_is_not_flagged(tmp_path):
    run = _scaled_loop(tmp_path, clip_first=False)
    facts = json.loads((run / "loop.json").read_text())["facts"]
    assert facts["optim.grad_clip"] == pytest.approx(1.0, rel=1e-3)
    assert "clip-before-unscale" not in {r["code"] for r in _rows(run)["deviations"]}


def test_clip_before_unscale_bounds():
    from reproscope.instrument.loop_audit import clip_before_unscale_sentence as s
    assert s(1.0 / 2 ** 16, 2.0 ** 16) and s(0.5 / 2 ** 10, 2.0 ** 10)
    assert not s(1.0, 2.0 ** 16)  # a usual threshold, applied after unscale_
    assert s(0.0999 / 2 ** 16, 2.0 ** 16) and s(104 / 2 ** 16, 2.0 ** 16)  # within 5 % of 0.1 .. 100
    assert not s(1e-3, 2.0 ** 17)  # 131 x the scale: no usual threshold
    assert not s(0.09 / 2 ** 4, 2.0 ** 4)  # under 0.1 / 1.05
    assert not s(1e-5, None) and not s(0.02, 2.0 ** 8)  # no scaler; not tiny


class Plain(nn.Module):
    """No BatchNorm, dropout or drop path: train mode changes nothing in its forward."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Conv2d(3, 8, 4, stride=4), nn.Linear(8, K)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


@pytest.mark.parametrize("kind", ["plain", "batchnorm", "dropout"])
def test_eval_in_train_mode_names_what_this_model_has(tmp_path, kind):
    torch.manual_seed(0)
    model = {"plain": Plain(), "batchnorm": nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8),
                                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, K)),
             "dropout": nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.Dropout(0.1), nn.Linear(16, K))}[kind]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = tmp_path / kind
    with reproscope.watch(model, opt, run_dir=run, against=REF, tensorboard=False) as w:
        for _ in range(3):
            x, y = torch.randn(8, 3, 32, 32), torch.randint(0, K, (8,))
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            w.step(loss, targets=y)
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                model(x)  # still in train mode
            w.evaluate(top1=10.0)
    facts = json.loads((run / "loop.json").read_text())["facts"]
    want = {"plain": [], "batchnorm": ["BatchNorm"], "dropout": ["dropout"]}[kind]
    assert facts["eval.train_mode"] is True and facts["eval.train_mode_modules"] == want
    row = next(r for r in _rows(run)["deviations"] if r["code"] == "eval-train-mode")
    assert row["mistake"] is (kind != "plain")
    assert ("BatchNorm used batch statistics" in row["reason"]) is (kind == "batchnorm")
    assert ("dropout stayed on" in row["reason"]) is (kind == "dropout")


def test_eval_train_mode_of_a_run_recorded_before_the_modules_were_is_still_a_mistake():
    r = get_recipe(REF)
    facts = {**recipe_facts(r), "eval.train_mode": True}
    row = next(x for x in audit(facts, r)["deviations"] if x["code"] == "eval-train-mode")
    assert row["mistake"] and "BatchNorm" in row["reason"]
