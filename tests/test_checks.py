"""The shared grader machinery, tested directly: rules that cannot be dodged, tolerances
that fail on real errors, work counts that see loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as imported_sdpa

from kata import checks

RULES = checks.Rules(("*scaled_dot_product*", "*attention*"))
q = k = v = torch.randn(2, 3, 4, 8)

ALIASES = {
    "functional": lambda: F.scaled_dot_product_attention(q, k, v),
    "imported_at_load": lambda: imported_sdpa(q, k, v),
    "torch_ops_aten": lambda: torch.ops.aten.scaled_dot_product_attention(q, k, v),
    "aten_math_kernel": lambda: torch.ops.aten._scaled_dot_product_attention_math(q, k, v)[0],
    "torch_C": lambda: torch._C._nn.scaled_dot_product_attention(q, k, v),
    "nn_multihead_attention": lambda: nn.MultiheadAttention(8, 2, batch_first=True)(q[0], k[0], v[0])[0],
    "multi_head_attention_forward": lambda: nn.MultiheadAttention(8, 2, batch_first=True)(q[0], k[0], v[0], need_weights=False)[0],
}


@pytest.mark.parametrize("name", ALIASES)
def test_forbidden_op_is_caught_whatever_its_name(name):
    with pytest.raises(checks.RuleBroken, match="forbids"):
        RULES.call(ALIASES[name])


def test_a_learners_try_except_cannot_hide_a_violation():
    def sneaky():
        try:
            return F.scaled_dot_product_attention(q, k, v)
        except Exception:
            return torch.zeros(1)

    with pytest.raises(checks.RuleBroken):
        RULES.call(sneaky)


def test_plain_ops_are_allowed():
    out = RULES.call(lambda a, b: torch.softmax(a @ b.transpose(-2, -1), -1), q, k)
    assert out.shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    "mutate",
    [lambda t: t.mul_(2), lambda t: t.transpose_(0, 1), lambda t: t[0].zero_()],
    ids=["values", "strides", "slice"],
)
def test_modified_input_is_caught(mutate):
    x = torch.randn(3, 3)
    with pytest.raises(checks.RuleBroken, match="modified its input"):
        RULES.call(lambda t: mutate(t) + 0, x)


def test_modified_module_state_is_caught():
    layer = nn.Linear(3, 3)

    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            with torch.no_grad():
                self.layer.weight.add_(1)
            return self.layer(x)

    with pytest.raises(checks.RuleBroken, match="module state layer.weight"):
        RULES.call(Sneaky(), torch.randn(2, 3))


def test_expect_close_reports_where_and_how_much():
    golden = torch.zeros(2, 3, dtype=torch.float64)
    got = torch.zeros(2, 3)
    got[1, 2] = 0.5
    with pytest.raises(checks.Wrong) as err:
        checks.expect_close(got, golden, what="f(x)", dtype=torch.float32, device=torch.device("cpu"))
    message = str(err.value)
    assert "max abs error 0.5 at index (1, 2): got 0.5, expected 0" in message
    assert "1 of 6 elements" in message


def test_expect_close_rejects_nan_and_wrong_dtype_and_shape():
    golden = torch.zeros(3, dtype=torch.float64)
    cpu = torch.device("cpu")
    with pytest.raises(checks.Wrong, match="got nan"):
        checks.expect_close(torch.tensor([0.0, float("nan"), 0.0]), golden, what="f", dtype=torch.float32, device=cpu)
    with pytest.raises(checks.Wrong, match="dtype torch.float64"):
        checks.expect_close(golden.clone(), golden, what="f", dtype=torch.float32, device=cpu)
    with pytest.raises(checks.Wrong, match="shape"):
        checks.expect_close(torch.zeros(4), golden, what="f", dtype=torch.float32, device=cpu)


def test_tolerance_grows_with_torchs_own_error_only():
    golden = torch.zeros(4, dtype=torch.float64)
    baseline = torch.full((4,), 1e-3)  # torch itself is off by 1e-3 in this dtype
    cpu = torch.device("cpu")
    checks.expect_close(torch.full((4,), 3e-3), golden, what="f", dtype=torch.float32, device=cpu, baseline=baseline)
    with pytest.raises(checks.Wrong):
        checks.expect_close(torch.full((4,), 5e-3), golden, what="f", dtype=torch.float32, device=cpu, baseline=baseline)


def test_op_count_sees_a_python_loop():
    def batched(x):
        return torch.softmax(x, -1) * 2

    def looped(x):
        return torch.stack([torch.softmax(row, -1) * 2 for row in x])

    small, large = torch.randn(2, 5), torch.randn(6, 5)
    checks.expect_same_op_count(checks.count_ops(batched, small), checks.count_ops(batched, large), what="b", small_desc="2", large_desc="6")
    with pytest.raises(checks.Wrong, match="a Python loop"):
        checks.expect_same_op_count(checks.count_ops(looped, small), checks.count_ops(looped, large), what="l", small_desc="2", large_desc="6")


def test_speed_ratio_tells_slow_from_fast():
    x = torch.randn(64, 64)
    cpu = torch.device("cpu")
    fast = lambda: x @ x  # noqa: E731
    slow = lambda: [x @ x for _ in range(20)]  # noqa: E731
    assert checks.speed_ratio(slow, fast, device=cpu) > 5
    with pytest.raises(checks.TooSlow, match="limit 3x"):
        checks.expect_fast_enough(checks.speed_ratio(slow, fast, device=cpu), 3.0, what="slow", device=cpu)


def test_pick_device():
    assert checks.pick_device("cpu").type == "cpu"
    assert checks.pick_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        checks.pick_device("tpu")
