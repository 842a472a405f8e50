"""Grader for the einsum kata: attention_scores, bilinear, batched_trace, multihead_project
(each one torch.einsum call) and einsum itself, built without torch.einsum.

Values against torch computed in float64 (matmul, F.bilinear, diagonal sums; torch.einsum
for the hand-built einsum, on 38 equations: one and two operands, diagonals, sums within
one operand, any output order, implicit output, 0-d and empty operands, non-contiguous
views); gradients against torch's autograd; half precision against torch's own error in
that dtype. Rules on every call: no F.bilinear, tensordot or trace (the topic's list), and
for the hand-built einsum no torch.einsum either (a second Rules object); inputs
unmodified. Work: the four einsum functions make exactly one torch.einsum call and no
matmul or reduction outside it (a spy run in the executor); the hand-built einsum runs the
same aten ops, views included, at two sizes of every index (no Python loop over an index),
and does its contractions as matrix multiplies (FLOPs counted: a broadcast multiply and
sum does none). No speed check: course.toml says why.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("einsum")
rules = checks.Rules(TOPIC.forbidden)
# The hand-built einsum may not lean on the op it rebuilds: the topic's list cannot say so,
# because the other four functions must call torch.einsum.
einsum_rules = checks.Rules((*TOPIC.forbidden, "*einsum*", "*tensordot*"))
LOW_PRECISION = [torch.bfloat16, torch.float16]
USES_EINSUM = ["attention_scores", "bilinear", "batched_trace", "multihead_project"]


@pytest.fixture(scope="module")
def ein(impl):
    return impl.load("einsum")


def rand(shape, *, seed: int, device, dtype=torch.float32, scale: float = 1.0):
    """Seeded normal values of any shape, 0-d included."""
    n = math.prod(shape)
    return randn(max(n, 1), seed=seed, device=device, dtype=dtype, scale=scale)[:n].reshape(shape)


# ---------------------------------------------------------------- torch's reference


def torch_attention_scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def torch_bilinear(x1, x2, weight, bias=None):
    return F.bilinear(x1, x2, weight, bias)


def torch_batched_trace(x):
    # torch.trace takes one matrix; the diagonal's sum is every matrix's trace at once.
    return x.diagonal(dim1=-2, dim2=-1).sum(-1)


def torch_multihead_project(x, w):
    return x.unsqueeze(1) @ w  # (B, 1, T, Dm) @ (H, Dm, Dh) -> (B, H, T, Dh)


TORCH = {
    "attention_scores": torch_attention_scores,
    "bilinear": torch_bilinear,
    "batched_trace": torch_batched_trace,
    "multihead_project": torch_multihead_project,
}


# ---------------------------------------------------------------- inputs of the four einsum functions


def transposed(shape, *, seed, device, dtype, dims=(0, 1)):
    """A non-contiguous tensor of `shape`: the transpose of a contiguous one."""
    a, b = dims
    swapped = list(shape)
    swapped[a], swapped[b] = swapped[b], swapped[a]
    return rand(swapped, seed=seed, device=device, dtype=dtype).transpose(a, b)


def case_args(fn: str, case: str, device, dtype=torch.float32) -> tuple:
    """The arguments of one named case of one of the four einsum functions."""

    def r(*shape, seed):
        return rand(shape, seed=seed, device=device, dtype=dtype)

    cases = {
        "attention_scores": {
            # T_q != T_k everywhere: a transposed result has the wrong shape.
            "4d": (r(2, 3, 4, 8, seed=1), r(2, 3, 6, 8, seed=2)),
            "3d": (r(2, 5, 8, seed=3), r(2, 7, 8, seed=4)),
            "2d": (r(5, 16, seed=5), r(3, 16, seed=6)),
            # D = 1: every scale (1, 1/D, 1/sqrt(D)) agrees; only the layout can be wrong.
            "one_feature": (r(2, 5, 1, seed=9), r(2, 7, 1, seed=10)),
            "non_contiguous": (transposed((2, 3, 4, 8), seed=7, device=device, dtype=dtype, dims=(1, 2)),
                               transposed((2, 3, 6, 8), seed=8, device=device, dtype=dtype, dims=(1, 2))),  # fmt: skip
        },
        "bilinear": {
            # in1 != in2: swapping x1 and x2 (or weight's two input dims) cannot even run.
            "2d": (r(4, 3, seed=1), r(4, 5, seed=2), r(6, 3, 5, seed=3), r(6, seed=4)),
            "3d": (r(2, 4, 3, seed=5), r(2, 4, 5, seed=6), r(6, 3, 5, seed=3), r(6, seed=4)),
            "no_bias": (r(4, 3, seed=1), r(4, 5, seed=2), r(6, 3, 5, seed=3)),
            # in1 == in2 with a weight that is not symmetric: a swap runs, and is wrong.
            "square": (r(4, 5, seed=7), r(4, 5, seed=8), r(6, 5, 5, seed=9), r(6, seed=4)),
            "single_example": (r(3, seed=10), r(5, seed=11), r(6, 3, 5, seed=3), r(6, seed=4)),
            "non_contiguous": (transposed((4, 3), seed=12, device=device, dtype=dtype),
                               transposed((4, 5), seed=13, device=device, dtype=dtype), r(6, 3, 5, seed=3), r(6, seed=4)),  # fmt: skip
        },
        "batched_trace": {
            "3d": (r(4, 5, 5, seed=1),),
            "2d": (r(5, 5, seed=2),),
            "4d": (r(2, 3, 4, 4, seed=3),),
            "non_contiguous": (transposed((3, 5, 5), seed=4, device=device, dtype=dtype),),
        },
        "multihead_project": {
            # T != H and Dm != Dh: a wrong output order or a transposed weight shows in the shape.
            "basic": (r(2, 5, 8, seed=1), r(3, 8, 4, seed=2)),
            # Dm == Dh: a weight read as (H, Dh, Dm) runs, and is wrong.
            "square_heads": (r(2, 5, 6, seed=3), r(3, 6, 6, seed=4)),
            # T == H: heads and time in the wrong order still have the right shape.
            "heads_equal_time": (r(2, 4, 8, seed=5), r(4, 8, 4, seed=6)),
            "one_head": (r(3, 5, 8, seed=7), r(1, 8, 4, seed=8)),
            "non_contiguous": (transposed((2, 5, 8), seed=9, device=device, dtype=dtype), r(3, 8, 4, seed=2)),
        },
    }
    return cases[fn][case]


CASES = {
    "attention_scores": ["4d", "3d", "2d", "one_feature", "non_contiguous"],
    "bilinear": ["2d", "3d", "no_bias", "square", "single_example", "non_contiguous"],
    "batched_trace": ["3d", "2d", "4d", "non_contiguous"],
    "multihead_project": ["basic", "square_heads", "heads_equal_time", "one_head", "non_contiguous"],
}


def expect_matches_torch(ein, fn: str, args: tuple, *, device, dtype=torch.float32) -> None:
    what = describe_call(fn, *args)
    got = rules.call(getattr(ein, fn), *args, what=what)
    want = TORCH[fn](*(golden(a) for a in args))
    baseline = TORCH[fn](*args)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


def expect_gradients(call, torch_call, leaves: dict, *, what: str, device) -> None:
    """Gradients of every leaf through the learner's call(leaves, upstream) against
    torch_call(leaves): the backward runs where the learner's graph is, the grads come back."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    gold = {k: golden(v) for k, v in leaves.items()}
    want_out = torch_call(gold)
    upstream = rand(tuple(want_out.shape), seed=99, device=device)
    out = call(leaves, upstream)
    checks.expect_tensor(out, shape=want_out.shape, dtype=torch.float32, device=device, what=what)
    if not out.requires_grad:
        raise checks.Wrong(f"{what} returned a tensor with no autograd history: was it computed outside torch?")
    want = torch.autograd.grad(want_out, list(gold.values()), golden(upstream))
    base_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    base = torch.autograd.grad(torch_call(base_leaves), list(base_leaves.values()), upstream)
    for name, leaf, w, b in zip(leaves, leaves.values(), want, base):
        if leaf.grad is None:
            raise checks.Wrong(f"{what}: no gradient reaches {name}; is something detached?")
        expect_close(leaf.grad, w, what=f"the gradient of {name} through {what}", dtype=torch.float32, device=device, baseline=b)


# ---------------------------------------------------------------- the four einsum functions: values


@pytest.mark.parametrize("case", CASES["attention_scores"])
def test_attention_scores_matches_torch(ein, device, case):
    expect_matches_torch(ein, "attention_scores", case_args("attention_scores", case, device), device=device)


@pytest.mark.parametrize("case", CASES["bilinear"])
def test_bilinear_matches_torch(ein, device, case):
    expect_matches_torch(ein, "bilinear", case_args("bilinear", case, device), device=device)


@pytest.mark.parametrize("case", CASES["batched_trace"])
def test_batched_trace_matches_torch(ein, device, case):
    expect_matches_torch(ein, "batched_trace", case_args("batched_trace", case, device), device=device)


@pytest.mark.parametrize("case", CASES["multihead_project"])
def test_multihead_project_matches_torch(ein, device, case):
    expect_matches_torch(ein, "multihead_project", case_args("multihead_project", case, device), device=device)


GRADIENT_CASES = {"attention_scores": "4d", "bilinear": "3d", "batched_trace": "3d", "multihead_project": "basic"}
LEAF_NAMES = {
    "attention_scores": ("q", "k"),
    "bilinear": ("x1", "x2", "weight", "bias"),
    "batched_trace": ("x",),
    "multihead_project": ("x", "w"),
}


@pytest.mark.parametrize("fn", USES_EINSUM)
def test_gradients_match_torch(ein, device, fn):
    """Every input's gradient: the weights of bilinear and multihead_project are trained."""
    args = case_args(fn, GRADIENT_CASES[fn], device)
    leaves = dict(zip(LEAF_NAMES[fn], args))
    what = describe_call(fn, *args)
    expect_gradients(
        lambda t, up: rules.call(getattr(ein, fn), *t.values(), what=what, backward=up),
        lambda t: TORCH[fn](*t.values()),
        leaves,
        what=what,
        device=device,
    )


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("fn", USES_EINSUM)
def test_low_precision(ein, device, fn, dtype):
    """bfloat16 and float16 in, the same dtype out, as accurate as torch's own ops in that dtype."""
    checks.need_dtype(dtype, device)
    case = {"attention_scores": "4d", "bilinear": "3d", "batched_trace": "3d", "multihead_project": "basic"}[fn]
    expect_matches_torch(ein, fn, case_args(fn, case, device, dtype), device=device, dtype=dtype)


# ---------------------------------------------------------------- the four einsum functions: one einsum call


# Ops that multiply-and-add or reduce, at the aten level (torch.matmul, @, Tensor.sum and
# every alias end in one of these). Outside its one einsum call a function may run none.
CONTRACTIONS = checks.REDUCTIONS | frozenset(
    "aten." + name for name in ("vdot", "addmv", "addr", "prod", "amax", "amin", "logsumexp", "_trilinear")
)


class _CountEinsum(TorchFunctionMode):
    """Counts torch.einsum calls, and marks when one is running (run in the executor)."""

    def __init__(self, state: dict):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not torch.functional.einsum:
            return func(*args, **(kwargs or {}))
        self.state["einsum_calls"] += 1
        self.state["depth"] += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.state["depth"] -= 1


class _ContractionsOutsideEinsum(TorchDispatchMode):
    """Records the contraction ops that run while no torch.einsum call is (run in the executor)."""

    def __init__(self, state: dict):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not self.state["depth"] and name in CONTRACTIONS:
            self.state["outside"].append(name)
        return func(*args, **(kwargs or {}))


def einsum_use(fn, *args, **kwargs) -> dict:
    """How often fn(*args, **kwargs) calls torch.einsum, and which contraction ops it runs
    outside those calls. Sent to the executor by rules.call (so under the kata's rules)."""
    state = {"einsum_calls": 0, "depth": 0, "outside": []}
    with torch.no_grad(), _CountEinsum(state), _ContractionsOutsideEinsum(state):
        fn(*args, **kwargs)
    return {"einsum_calls": state["einsum_calls"], "outside": sorted(set(state["outside"]))}


USE_CASES = {"attention_scores": "4d", "bilinear": "3d", "batched_trace": "4d", "multihead_project": "basic"}


@pytest.mark.parametrize("fn", USES_EINSUM)
def test_uses_one_einsum_call(ein, device, fn):
    """The lesson of the first four: one torch.einsum call does all the multiplying and
    summing (no matmul, no sum, no loop of einsums over heads); elementwise ops around it
    (the scale, the bias) are fine."""
    args = case_args(fn, USE_CASES[fn], device)
    what = describe_call(fn, *args)
    use = rules.call(einsum_use, getattr(ein, fn), *args, what=what)
    calls, outside = int(use["einsum_calls"]), [str(n) for n in use["outside"]]
    if calls != 1:
        more = " (a loop?)" if calls > 1 else ""
        raise checks.Wrong(f"{what} called torch.einsum {calls} times{more}: write it as exactly one torch.einsum call")
    if outside:
        raise checks.Wrong(
            f"{what} runs {', '.join(outside)} outside its torch.einsum call: let the einsum equation do all the "
            "multiplying and summing (only elementwise ops such as a scale or a bias may sit around it)"
        )


# ---------------------------------------------------------------- the hand-built einsum: values


# name -> (equation, operand shapes). Sizes differ between letters, so a dim in the wrong
# place shows in the shape; 3-cycles (ijk->kij) tell a permutation from its inverse.
ONE_OPERAND = {
    "identity": ("ij->ij", [(3, 4)]),
    "transpose": ("ij->ji", [(3, 4)]),
    "cyclic_permutation": ("ijk->kij", [(2, 3, 4)]),
    "trace": ("ii->", [(4, 4)]),
    "diagonal": ("ii->i", [(4, 4)]),
    "sum_of_all": ("ijk->", [(2, 3, 4)]),
    "row_sums": ("ij->i", [(3, 4)]),
    "column_sums": ("ij->j", [(3, 4)]),
    "batched_diagonal": ("bii->bi", [(2, 3, 3)]),
    "diagonal_of_non_adjacent_dims": ("iji->ij", [(3, 4, 3)]),
    "diagonal_then_transpose": ("iij->ji", [(3, 3, 4)]),
    "triple_diagonal": ("iii->i", [(3, 3, 3)]),
}
TWO_OPERANDS = {
    "dot": ("i,i->", [(5,), (5,)]),
    "outer": ("i,j->ij", [(3,), (4,)]),
    "matrix_vector": ("ij,j->i", [(3, 4), (4,)]),
    "matmul": ("ij,jk->ik", [(2, 3), (3, 4)]),
    "matmul_output_transposed": ("ij,jk->ki", [(2, 3), (3, 4)]),
    "times_transpose": ("ij,kj->ik", [(2, 3), (4, 3)]),
    "batch_matmul": ("bij,bjk->bik", [(5, 2, 3), (5, 3, 4)]),
    "attention_scores": ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    "elementwise": ("ij,ij->ij", [(3, 4), (3, 4)]),
    "frobenius": ("ij,ij->", [(3, 4), (3, 4)]),
    # Two summed letters, in a different order in each operand.
    "two_summed_letters_reordered": ("ijk,kjl->il", [(2, 3, 4), (4, 3, 5)]),
    "batch_letter_in_the_middle": ("ibj,jbk->bik", [(2, 3, 4), (4, 3, 5)]),
    "output_interleaves_operands": ("bij,bjk->kbi", [(5, 2, 3), (5, 3, 4)]),
    # j is summed within the first operand only, k within the second only.
    "letters_summed_in_one_operand": ("ij,k->i", [(2, 3), (4,)]),
    "diagonal_then_contract": ("ii,ij->j", [(3, 3), (3, 4)]),
    "uppercase_letters": ("Ab,bC->AC", [(2, 3), (3, 4)]),
    "scalar_operand": (",ij->ij", [(), (2, 3)]),
    "empty_contraction": ("ij,jk->ik", [(2, 0), (0, 4)]),
    # No rows: reshape(1, 0, -1) cannot tell what -1 stands for.
    "no_rows": ("ij,jk->ik", [(0, 3), (3, 4)]),
    "everything_summed": ("ij,jk->", [(2, 3), (3, 4)]),
    "spaces": (" ij , jk -> ki ", [(2, 3), (3, 4)]),
}
IMPLICIT = {
    "matmul": ("ij,jk", [(2, 3), (3, 4)]),
    "sorted_is_a_transpose": ("ba", [(3, 4)]),
    "trace": ("ii", [(4, 4)]),
    "dot": ("i,i", [(5,), (5,)]),
    "uppercase_sorts_first": ("ib,iC", [(3, 2), (3, 4)]),
}
# Transposed views: strides no reshape-free view can merge.
NON_CONTIGUOUS = {
    "matmul": ("ij,jk->ik", [(2, 3), (3, 4)]),
    "two_summed_letters_reordered": ("ijk,kjl->il", [(2, 3, 4), (4, 3, 5)]),
    "batch_matmul": ("bij,bjk->bik", [(5, 2, 3), (5, 3, 4)]),
    "diagonal": ("ii->i", [(4, 4)]),
    "row_sums": ("ij->i", [(3, 4)]),
}


def operands(shapes, device, dtype=torch.float32, *, non_contiguous=False, seed=0) -> list:
    ops = []
    for i, shape in enumerate(shapes):
        if non_contiguous and len(shape) >= 2:
            ops.append(transposed(shape, seed=seed + i, device=device, dtype=dtype, dims=(0, len(shape) - 1)))
        else:
            ops.append(rand(shape, seed=seed + i, device=device, dtype=dtype))
    return ops


def expect_einsum_matches_torch(ein, equation: str, ops: list, *, device, dtype=torch.float32) -> None:
    what = describe_call("einsum", equation, *ops)
    got = einsum_rules.call(ein.einsum, equation, *ops, what=what)
    want = torch.einsum(equation, *(golden(o) for o in ops))
    if want.numel() == 0:  # no values to compare (expect_close needs at least one)
        checks.expect_tensor(got, shape=want.shape, dtype=dtype, device=device, what=what)
        return
    baseline = torch.einsum(equation, *ops)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ONE_OPERAND)
def test_einsum_one_operand(ein, device, case):
    equation, shapes = ONE_OPERAND[case]
    expect_einsum_matches_torch(ein, equation, operands(shapes, device), device=device)


@pytest.mark.parametrize("case", TWO_OPERANDS)
def test_einsum_two_operands(ein, device, case):
    equation, shapes = TWO_OPERANDS[case]
    expect_einsum_matches_torch(ein, equation, operands(shapes, device), device=device)


@pytest.mark.parametrize("case", IMPLICIT)
def test_einsum_implicit_output(ein, device, case):
    """No '->': the output is the letters seen once, sorted (uppercase first)."""
    equation, shapes = IMPLICIT[case]
    expect_einsum_matches_torch(ein, equation, operands(shapes, device), device=device)


@pytest.mark.parametrize("case", NON_CONTIGUOUS)
def test_einsum_non_contiguous_operands(ein, device, case):
    """Operands that are transposed views: .view cannot flatten them, reshape can."""
    equation, shapes = NON_CONTIGUOUS[case]
    expect_einsum_matches_torch(ein, equation, operands(shapes, device, non_contiguous=True), device=device)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", ["batch_matmul", "two_summed_letters_reordered"])
def test_einsum_low_precision(ein, device, case, dtype):
    checks.need_dtype(dtype, device)
    equation, shapes = TWO_OPERANDS[case]
    expect_einsum_matches_torch(ein, equation, operands(shapes, device, dtype), device=device, dtype=dtype)


EINSUM_GRADIENT_CASES = {
    "batch_matmul": TWO_OPERANDS["batch_matmul"],
    "two_summed_letters_reordered": TWO_OPERANDS["two_summed_letters_reordered"],
    "diagonal_then_contract": TWO_OPERANDS["diagonal_then_contract"],
    "letters_summed_in_one_operand": TWO_OPERANDS["letters_summed_in_one_operand"],
}


@pytest.mark.parametrize("case", EINSUM_GRADIENT_CASES)
def test_einsum_gradients(ein, device, case):
    """Gradients reach both operands, through the diagonals and the sums too."""
    equation, shapes = EINSUM_GRADIENT_CASES[case]
    ops = operands(shapes, device)
    what = describe_call("einsum", equation, *ops)
    expect_gradients(
        lambda t, up: einsum_rules.call(ein.einsum, equation, *t.values(), what=what, backward=up),
        lambda t: torch.einsum(equation, *t.values()),
        {"a": ops[0], "b": ops[1]},
        what=what,
        device=device,
    )


INVALID = {
    "three_operands": ("i,i,i->", [(2,), (2,), (2,)]),
    "fewer_subscripts_than_operands": ("ij->ji", [(2, 3), (3, 2)]),
    "ellipsis": ("...ij->...ji", [(2, 3, 4)]),
    "subscript_longer_than_dims": ("ijk->k", [(2, 3)]),
    "sizes_disagree": ("ij,jk->ik", [(2, 3), (4, 5)]),
    "diagonal_of_non_square": ("ii->i", [(2, 3)]),
    "output_letter_repeated": ("ij->ii", [(2, 2)]),
    "output_letter_not_in_inputs": ("ij->ik", [(2, 3)]),
}


@pytest.mark.parametrize("case", INVALID)
def test_einsum_rejects_invalid(ein, device, case):
    """What the docstring does not support is a ValueError, not a wrong answer or a RuntimeError."""
    equation, shapes = INVALID[case]
    ops = operands(shapes, device)
    einsum_rules.expect_raises(ValueError, ein.einsum, equation, *ops, what=describe_call("einsum", equation, *ops))


# ---------------------------------------------------------------- the hand-built einsum: work


def all_ops(ein, equation: str, shapes, device) -> Counter:
    """Every aten op (views too) of one einsum call: a loop over an index's values may run
    only views (x[i, i] for a diagonal), which count_ops leaves out."""
    ops = operands(shapes, device)
    return Counter(op.name for op in einsum_rules.record_ops(ein.einsum, equation, *ops))


# name -> (equation, small shapes, large shapes): every size > 1 and different in the two.
LOOP_CASES = {
    "batch_matmul": ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], [(5, 4, 6), (5, 6, 7)]),
    "dot": ("i,i->", [(3,), (3,)], [(9,), (9,)]),
    "diagonal": ("ii->i", [(3, 3)], [(8, 8)]),
    "batched_trace": ("bii->b", [(2, 3, 3)], [(4, 6, 6)]),
    "letters_summed_in_one_operand": ("ij,k->i", [(2, 3), (4,)], [(5, 6), (7,)]),
}


@pytest.mark.parametrize("case", LOOP_CASES)
def test_einsum_no_loop_over_indices(ein, device, case):
    """The same aten ops, views included, whatever the sizes of the indices."""
    equation, small, large = LOOP_CASES[case]
    checks.expect_same_op_count(
        partial(all_ops, ein, equation, small, device), partial(all_ops, ein, equation, large, device),
        what=f"einsum('{equation}', ...)", small_desc=f"operands {small}", large_desc=f"operands {large}",
    )  # fmt: skip


FLOP_CASES = {
    "batch_matmul": ("bij,bjk->bik", [(3, 4, 5), (3, 5, 6)]),
    "attention_scores": ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    "two_summed_letters_reordered": ("ijk,kjl->il", [(2, 3, 4), (4, 3, 5)]),
}


@pytest.mark.parametrize("case", FLOP_CASES)
def test_einsum_contracts_with_matmul(ein, device, case):
    """A contraction is one matrix multiply: 2 FLOPs per product of all the letters' sizes.
    A broadcast multiply then a sum computes the same values with no matmul (0 FLOPs, as
    torch counts them) and materialises every product first."""
    equation, shapes = FLOP_CASES[case]
    ops = operands(shapes, device)
    sizes = {c: n for sub, shape in zip(equation.split("->")[0].split(","), shapes) for c, n in zip(sub, shape)}
    want = 2 * math.prod(sizes.values())
    what = describe_call("einsum", equation, *ops)
    got = einsum_rules.count_flops(ein.einsum, equation, *ops)
    if got != want:
        how = "no matrix multiply at all (a broadcast multiply and sum?)" if got == 0 else f"{got:,} FLOPs"
        raise checks.Wrong(
            f"{what} did {how}; one batched matmul over the flattened letters does {want:,}. Permute and reshape "
            "each operand to (batch, kept, summed) and (batch, summed, kept), then torch.bmm"
        )
