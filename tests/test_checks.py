"""The shared grader machinery, tested directly: rules that cannot be dodged, tolerances
that fail on real errors, work counts that see loops."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as imported_sdpa

from kata import checks, harness

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


def test_an_input_holding_nan_is_not_modified_by_being_read():
    x = torch.tensor([1.0, float("nan"), -float("inf")])
    RULES.call(lambda t: t * 2, x)  # read only: no rule broken
    with pytest.raises(checks.RuleBroken, match="modified its input"):
        RULES.call(lambda t: t.nan_to_num_(), x.clone())
    with pytest.raises(checks.RuleBroken, match="modified its input"):
        RULES.call(lambda t: t[0].fill_(float("nan")) + 0, x.clone())


def test_empty_results_are_compared_by_shape():
    want = checks.golden(torch.empty(0, 3))
    checks.expect_close(torch.empty(0, 3), want, what="f", dtype=torch.float32, device=torch.device("cpu"), baseline=torch.empty(0, 3))
    with pytest.raises(checks.Wrong, match="shape"):
        checks.expect_close(torch.empty(0, 2), want, what="f", dtype=torch.float32, device=torch.device("cpu"))


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

    def counts(fn):
        return partial(RULES.count_ops, fn, small), partial(RULES.count_ops, fn, large)

    checks.expect_same_op_count(*counts(batched), what="b", small_desc="2", large_desc="6")
    with pytest.raises(checks.Wrong, match="a Python loop"):
        checks.expect_same_op_count(*counts(looped), what="l", small_desc="2", large_desc="6")


def test_an_op_count_that_varies_between_calls_is_not_called_a_loop():
    """Random work (rejection sampling, as nn.init.trunc_normal_ does) changes the count from
    call to call, here fewer ops for more rows: that says nothing about loops."""
    extra = iter([3, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0])

    def random_work(x):
        for _ in range(next(extra)):
            torch.rand(3).sum()
        return x * 2

    small, large = torch.randn(2, 5), torch.randn(6, 5)
    with pytest.raises(checks.Wrong) as err:
        checks.expect_same_op_count(
            partial(RULES.count_ops, random_work, small), partial(RULES.count_ops, random_work, large), what="f", small_desc="2 rows", large_desc="6 rows"
        )
    message = str(err.value)
    assert "does not run the same aten ops each time" in message and "aten.rand ran 3/0/1/0/0 times on 2 rows" in message
    assert "loop over them" not in message


def test_work_checks_run_under_the_rules():
    x = torch.randn(2, 3, 4, 8)
    fused = partial(F.scaled_dot_product_attention, x, x, x)
    for measure in (RULES.count_ops, RULES.record_ops, RULES.count_flops):
        with pytest.raises(checks.RuleBroken, match="forbids"):
            measure(fused)
    with pytest.raises(checks.RuleBroken, match="modified its input"):
        RULES.count_ops(lambda t: t.add_(1), x)
    with pytest.raises(checks.RuleBroken, match="forbids"):
        RULES.speed_ratio(fused, partial(torch.matmul, x, x), device=torch.device("cpu"))
    with pytest.raises(checks.RuleBroken, match="forbids"):
        RULES.expect_raises(ValueError, fused, what="f")


def test_speed_ratio_tells_slow_from_fast():
    x = torch.randn(64, 64)
    cpu = torch.device("cpu")
    fast = partial(torch.matmul, x, x)
    slow = lambda: [x @ x for _ in range(20)]  # noqa: E731
    assert RULES.speed_ratio(slow, fast, device=cpu) > 5
    with pytest.raises(checks.TooSlow, match="limit 3x"):
        checks.expect_fast_enough(RULES.speed_ratio(slow, fast, device=cpu), 3.0, what="slow", device=cpu)


def test_speed_ratio_measures_longer_near_the_limit():
    """Rounds go on past the base budget only while the median's interval holds the limit."""
    x = torch.randn(64, 64)
    calls = {"n": 0}

    def counted():
        calls["n"] += 1
        return x @ x

    def rounds(**kwargs):
        calls["n"] = 0
        RULES.speed_ratio(counted, partial(torch.matmul, x, x), device=torch.device("cpu"), max_rounds=5, extra_budget_s=0.3, **kwargs)
        return calls["n"]

    far, near = rounds(near=100.0), rounds(near=1.0)
    assert near > far


def test_straddles_is_the_medians_interval():
    ratios = [1.0 + 0.01 * i for i in range(100)]  # median 1.495, 95% interval about 1.39 to 1.60
    assert harness.straddles(ratios, 1.5) and harness.straddles(ratios, 1.4)
    assert not harness.straddles(ratios, 1.3) and not harness.straddles(ratios, 1.7)


def test_reductions_in_float32_are_told_from_half_precision_ones():
    x = torch.randn(4, 16, dtype=torch.bfloat16)

    def ops(fn):
        return RULES.record_ops(fn, x)

    def check(fn):
        checks.expect_reductions_in_float32(ops(fn), what="f")

    check(lambda t: t.float().square().mean(-1))  # converted first
    check(lambda t: t.mean(-1, dtype=torch.float32))  # reads x itself, accumulates in float32
    check(lambda t: torch.linalg.vector_norm(t, dim=-1, dtype=torch.float32))
    with pytest.raises(checks.Wrong, match="returns bfloat16"):
        check(lambda t: t.square().mean(-1))
    with pytest.raises(checks.Wrong, match="reads bfloat16 values it computed"):
        check(lambda t: t.square().mean(-1, dtype=torch.float32))
    with pytest.raises(checks.Wrong, match="aten.bmm"):
        check(lambda t: (t[:, None, :] @ t[:, :, None]).float())


def test_pick_device():
    assert checks.pick_device("cpu").type == "cpu"
    assert checks.pick_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        checks.pick_device("tpu")
