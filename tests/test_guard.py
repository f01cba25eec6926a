"""``StepGuard.decide`` as a table: (policy, scaler, history, loss, grad norm, gradients finite) -> (action, code).

Every row of the guard's docstring table, the rollback limit and the fp16 overflow limit, without a
Trainer: the Trainer and ``reproscope.watch`` both act on exactly these decisions."""

from __future__ import annotations

import math

import pytest

from reproscope.config import InstrumentConfig
from reproscope.train.guard import MAX_CONSECUTIVE_ROLLBACKS, MAX_SCALER_OVERFLOWS, StepGuard

INF, NAN = math.inf, math.nan


def guard(policy="stop", scaler=False, spike_skip=False, history=(2.0,) * 20):
    g = StepGuard(InstrumentConfig(nan_policy=policy, spike_skip=spike_skip), scaler=scaler)
    for i, v in enumerate(history):  # a flat recent loss: the spike detector's window
        assert g.decide(v + 0.001 * (i % 3), 1.0, i + 1).code == "ok"
    return g


@pytest.mark.parametrize("policy,scaler,spike_skip,loss,gn,finite,action,code", [
    ("stop", False, False, 2.0, 1.0, None, "step", "ok"),
    ("stop", False, False, 40.0, 1.0, None, "step", "loss-spike"),
    ("stop", False, True, 40.0, 1.0, None, "skip", "loss-spike"),
    ("stop", False, False, NAN, 1.0, None, "stop", "nonfinite"),
    ("skip", False, False, 2.0, NAN, False, "skip", "nonfinite"),
    ("rollback", False, False, INF, INF, None, "rollback", "nonfinite"),
    ("skip", False, False, 2.0, INF, True, "stop", "grad-norm-overflow"),  # every gradient finite: a divergence
    ("skip", False, False, 2.0, INF, False, "skip", "nonfinite"),  # some gradient is not finite
    ("stop", True, False, 2.0, INF, None, "step", "scaler-overflow"),  # fp16: the scaler skips and backs off
    ("stop", True, False, NAN, NAN, None, "stop", "nonfinite"),  # fp16, a non-finite loss is a NaN all the same
])
def test_decide(policy, scaler, spike_skip, loss, gn, finite, action, code):
    d = guard(policy, scaler, spike_skip).decide(loss, gn, 21, grads_finite=finite)
    assert (d.action, d.code, d.step) == (action, code, 21)
    if code == "nonfinite":
        assert d.policy == action


def test_rollbacks_in_a_row_turn_into_a_stop_and_a_finite_step_resets_them():
    g = guard("rollback")
    actions = [g.decide(NAN, NAN, 21).action for _ in range(MAX_CONSECUTIVE_ROLLBACKS + 1)]
    assert actions == ["rollback"] * MAX_CONSECUTIVE_ROLLBACKS + ["stop"]
    g = guard("rollback")
    g.decide(NAN, NAN, 21)
    assert g.decide(2.0, 1.0, 21).code == "ok"
    assert g.decide(NAN, NAN, 22).action == "rollback" and g.consecutive_rollbacks == 1


def test_scaler_overflows_in_a_row_count_as_a_nan_past_the_limit():
    g = guard("stop", scaler=True)
    codes = [g.decide(2.0, INF, 21 + i).code for i in range(MAX_SCALER_OVERFLOWS + 1)]
    assert codes == ["scaler-overflow"] * MAX_SCALER_OVERFLOWS + ["nonfinite"]
    g = guard("stop", scaler=True)
    g.decide(2.0, INF, 21)
    g.decide(2.0, 1.0, 22)  # a finite step ends the run of overflows
    assert g.scaler_overflows == 0


def test_the_spike_window_survives_a_checkpoint():
    g = guard()
    h = StepGuard(InstrumentConfig())
    h.load_state_dict(g.state_dict())
    assert h.decide(40.0, 1.0, 21).code == "loss-spike"
    assert StepGuard(InstrumentConfig()).decide(40.0, 1.0, 1).code == "ok"  # no history: no spike


@pytest.mark.parametrize("grad,scaler,code", [
    (1e20, False, "grad-norm-overflow"),  # every gradient finite, the norm overflows float32: a divergence
    (math.inf, False, "nonfinite"),  # one gradient is infinite
    (1e20, True, "scaler-overflow"),  # fp16: the scaler's business, the gradients are not read
])
def test_decide_step_reads_the_gradients_only_when_the_norm_overflowed(grad, scaler, code):
    import torch
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), grad)
    gn = torch.nn.utils.get_total_norm([p.grad]).item()
    assert not math.isfinite(gn)
    assert guard("skip", scaler).decide_step(2.0, gn, 21, [p]).code == code
    q = torch.nn.Parameter(torch.zeros(2))  # a finite norm: no gradient is read (q has none)
    assert guard("skip", scaler).decide_step(2.0, 1.0, 21, [q]).code == "ok"
