"""The baselines of half-precision tolerances are torch's own error in that dtype, not more.

A half-precision check allows FUDGE times the error a torch baseline makes in the same
dtype. A baseline that is itself wrong widens the tolerance until anything passes: the
unfused math kernel once got a bool mask, added it to the scores as 1.0/0.0, erred by 1.86
in bfloat16 and float16, and made the tolerance about 7.5. Here every such baseline is held
to a small factor of the error of torch's fused op in the same dtype on the same input.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kata import checks
from kata.checks import golden, max_error
from tests.grading import load_grader

DTYPES = [torch.bfloat16, torch.float16]
# The unfused kernel may round differently from the fused one, not be worse by more than this.
FACTOR = 2.0


def expect_near_fused(baseline, fused, golden_out, what):
    base_err, fused_err = max_error(baseline, golden_out), max_error(fused, golden_out)
    assert base_err <= FACTOR * fused_err + 1e-6, f"{what}: baseline error {base_err:.3g}, fused op's {fused_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", load_grader("attention").LOW_PRECISION_CASES)
def test_attention_low_precision_baselines(case, dtype):
    grader = load_grader("attention")
    args, kwargs = grader.sdpa_case(case, "cpu", dtype)
    low = [a.to(dtype) if a.is_floating_point() else a for a in args]  # as test_low_precision builds it
    want = grader.torch_sdpa(*[golden(a) for a in args], **kwargs)
    baseline = grader.torch_sdpa(*low, **kwargs, math_only=True)
    fused = grader.torch_sdpa(*low, **kwargs)
    expect_near_fused(baseline, fused, want, f"attention {case} in {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kv_cache_low_precision_baseline(dtype):
    grader = load_grader("kv_cache")
    q, k, v = (checks.randn(2, 3, t, 4, seed=s, device="cpu", dtype=dtype) for s, t in ((1, 3), (2, 7), (3, 7)))
    want = grader.torch_attention(golden(q), golden(k), golden(v))
    expect_near_fused(grader.torch_attention(q, k, v, math_only=True), grader.torch_attention(q, k, v), want, f"kv_cache in {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "float", "none"])
def test_unfused_attention_masks_as_the_fused_op_does(kind, dtype):
    q, k, v = (checks.randn(2, 2, 5, 8, seed=s, device="cpu", dtype=dtype) for s in (1, 2, 3))
    mask = {
        "bool": checks.randn(2, 1, 5, 5, seed=4, device="cpu") > -0.5,
        "float": checks.randn(5, 5, seed=4, device="cpu", dtype=dtype),
        "none": None,
    }[kind]
    if kind == "bool":
        mask[..., 0] = True  # no row fully masked
    want = F.scaled_dot_product_attention(golden(q), golden(k), golden(v), attn_mask=golden(mask))
    got = checks.unfused_attention(q, k, v, mask)
    assert got.dtype == dtype
    expect_near_fused(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), want, f"{kind} mask in {dtype}")
