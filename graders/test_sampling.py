"""Grader for the sampling kata: apply_temperature, top_k_filter, top_p_filter, sample,
apply_repetition_penalty.

The filters are checked against torch's own ops (topk, sort, softmax, cumsum) in float64,
token by token: a kept logit must come back unchanged and in place, a dropped one as -inf.
Where float rounding could honestly go either way (a running total within a hair of p),
either answer is accepted. `sample` is checked for shape, dtype, greedy decoding, tokens
outside the nucleus, reproducibility with a generator and, with a chi-square
goodness-of-fit test, for drawing from the filtered softmax. Rules (inputs unmodified) on
every call; op counts at two sizes catch Python loops; speed against the reference on
(256, 32000) logits.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("sampling")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]
NEG_INF = float("-inf")


@pytest.fixture(scope="module")
def sampling(impl):
    return impl.load("sampling")


@pytest.fixture(scope="module")
def reference_sampling(reference):
    return reference.load("sampling")



# ---------------------------------------------------------------- torch's reference, float64


def torch_top_k_keep(logits, k):
    """Bool (..., V): the tokens top-k keeps, ties with the k-th value included."""
    x = golden(logits)
    if k >= x.shape[-1]:
        return torch.ones_like(x, dtype=torch.bool)
    return x >= torch.topk(x, k, dim=-1).values[..., -1:]


def torch_top_p_keep(logits, p, band=0.0):
    """(sure, maybe), bool (..., V): the tokens top-p must keep and those it may keep.

    The token whose running total first reaches p is kept. A running total within `band`
    of p could round either way in the dtype under test, so the token it belongs to may be
    kept or not. Ties with the smallest kept logit are kept."""
    x = golden(logits)
    if p >= 1:
        everything = torch.ones_like(x, dtype=torch.bool)
        return everything, everything
    s = torch.sort(x, dim=-1, descending=True).values
    cum = torch.cumsum(torch.softmax(s, dim=-1), dim=-1)
    V = x.shape[-1]

    def keep(limit):
        n = ((cum < limit).sum(dim=-1, keepdim=True) + 1).clamp(max=V)
        return x >= s.gather(-1, n - 1)

    return keep(p - band), keep(p + band)


def band_for(dtype):
    """How far a running total may be from float64's before a boundary token counts as a
    toss-up: float32 rounding over ~100 terms, or a bf16/fp16 softmax."""
    return 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2


def torch_repetition_penalty(logits, prev_ids, penalty):
    """Presence mask, then the penalty where present: each seen token exactly once."""
    present = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter(-1, prev_ids, True)
    return torch.where(present, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def expect_filtered(got, logits, sure, maybe, *, what, device):
    """got must equal logits where `sure`, be -inf outside `maybe`, and one or the other between."""
    checks.expect_tensor(got, shape=logits.shape, dtype=logits.dtype, device=device, what=what)
    g, x = got.detach().cpu(), logits.detach().cpu()
    sure, maybe = sure.cpu() | (x == NEG_INF), maybe.cpu()
    unchanged, dropped = g == x, g == NEG_INF
    finite = x != NEG_INF

    def where(mask):
        idx = tuple(int(i) for i in mask.nonzero()[0])
        row = idx[:-1]
        # Counted among finite logits: a -inf in the input is neither kept nor dropped.
        lo, hi = int((sure & finite)[row].sum()), int((maybe & finite)[row].sum())
        exp_kept = lo if lo == hi else f"{lo} to {hi}"
        return (
            f"at index {idx} (logit {x[idx].item():.6g}): got {g[idx].item():.6g}; "
            f"that row keeps {int((unchanged & ~dropped)[row].sum())} tokens, expected {exp_kept}"
        )

    changed = ~unchanged & ~dropped
    if changed.any():
        raise checks.Wrong(
            f"{what} changed {int(changed.sum())} logits to values that are neither the input's nor -inf, {where(changed)}. "
            "Kept logits must come back unchanged, in the input's token order."
        )
    lost = sure & ~unchanged
    if lost.any():
        raise checks.Wrong(f"{what} dropped {int(lost.sum())} tokens it must keep, {where(lost)}")
    extra = ~maybe & ~dropped
    if extra.any():
        raise checks.Wrong(f"{what} kept {int(extra.sum())} tokens it must set to -inf, {where(extra)}")


# ---------------------------------------------------------------- inputs


def logits_case(name: str, device, dtype=torch.float32):
    """Logits for one named case: random rows, or crafted ones for a single property."""

    def r(*shape, seed=1, scale=2.0):
        return randn(*shape, seed=seed, device=device, dtype=dtype, scale=scale)

    def t(rows):
        return torch.tensor(rows, dtype=dtype, device=device)

    with_inf = r(4, 30, seed=5)
    with_inf[:, ::3] = NEG_INF  # 10 of the 30 tokens of every row are already ruled out
    cases = {
        "2d": r(4, 50),
        "3d": r(2, 3, 40, seed=2),
        # Any number of leading dims: code written for at most (B, T, V) fails here.
        "4d": r(2, 2, 3, 30, seed=13),
        "1d": r(25, seed=3),
        "non_contiguous": r(50, 4, seed=4).t(),  # (4, 50), column-major
        "large_magnitude": r(3, 40, seed=6) + 100.0,  # exp overflows float32 above ~88
        "neg_inf_present": with_inf,
        # top-k: the 2nd largest value is tied three times in the first row, twice in the second.
        "ties": t([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [5.0, 4.0, 0.5, 4.0, -1.0, 4.5]]),
        # softmax: 0.5, 0.3, 0.15, 0.05 (token 1, 3, 0, 2): p = 0.7 is crossed by token 3.
        "crossing": torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=torch.float64)).to(device, dtype),
        # Probabilities 0.687, 0.093 x 3, 0.034: any p in (0.69, 0.96) ends among the three tied 1.0s.
        "tied_crossing": t([[1.0, 3.0, 1.0, 0.0, 1.0]]),
        # Tokens whose probability is 0 in float32 (exp(-300)) but whose logit is finite;
        # the running total reaches exactly 1 at the second token.
        "underflow": t([[0.0, -300.0, 0.0, -1000.0], [2.0, -200.0, 1.0, 0.5]]),
    }
    return cases[name]


# ---------------------------------------------------------------- apply_temperature


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5, 1e-3], ids=lambda t: f"T={t:g}")
@pytest.mark.parametrize("case", ["2d", "3d", "4d", "1d", "non_contiguous", "neg_inf_present"])
def test_temperature_matches_torch(sampling, device, case, temperature):
    logits = logits_case(case, device)
    what = describe_call("apply_temperature", logits, temperature)
    got = rules.call(sampling.apply_temperature, logits, temperature, what=what)
    expect_close(got, golden(logits) / temperature, what=what, dtype=logits.dtype, device=device, baseline=logits / temperature)


# ---------------------------------------------------------------- top_k_filter


TOP_K_CASES = [
    ("2d", 5), ("2d", 1), ("3d", 7), ("4d", 4), ("1d", 3), ("non_contiguous", 10), ("large_magnitude", 4),
    ("neg_inf_present", 5), ("neg_inf_present", 25), ("ties", 2), ("ties", 1), ("2d", 50), ("2d", 80),
]  # fmt: skip


@pytest.mark.parametrize("case, k", TOP_K_CASES, ids=[f"{c}-k={k}" for c, k in TOP_K_CASES])
def test_top_k_matches_torch(sampling, device, case, k):
    """k = 50 and 80 on rows of 50 keep everything; 'ties' keeps every token equal to the k-th value."""
    logits = logits_case(case, device)
    what = describe_call("top_k_filter", logits, k)
    got = rules.call(sampling.top_k_filter, logits, k, what=what)
    keep = torch_top_k_keep(logits, k)
    expect_filtered(got, logits, keep, keep, what=what, device=device)


# ---------------------------------------------------------------- top_p_filter


TOP_P_CASES = [
    ("2d", 0.9), ("2d", 0.5), ("2d", 0.05), ("3d", 0.8), ("4d", 0.8), ("1d", 0.7), ("non_contiguous", 0.9),
    ("large_magnitude", 0.9), ("neg_inf_present", 0.9), ("neg_inf_present", 1.0), ("crossing", 0.7),
    ("crossing", 0.45), ("tied_crossing", 0.75), ("underflow", 1.0), ("underflow", 0.999999), ("2d", 1.0),
]  # fmt: skip


@pytest.mark.parametrize("case, p", TOP_P_CASES, ids=[f"{c}-p={p:g}" for c, p in TOP_P_CASES])
def test_top_p_matches_torch(sampling, device, case, p):
    """'crossing' keeps the token that crosses p; p = 0.05 and 0.45 keep only the most
    probable token; p = 1 keeps every token, even one of probability 0 in float32."""
    logits = logits_case(case, device)
    what = describe_call("top_p_filter", logits, p)
    got = rules.call(sampling.top_p_filter, logits, p, what=what)
    sure, maybe = torch_top_p_keep(logits, p, band_for(logits.dtype))
    expect_filtered(got, logits, sure, maybe, what=what, device=device)


# ---------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("fn", ["apply_temperature", "top_k_filter", "top_p_filter", "apply_repetition_penalty"])
def test_low_precision(sampling, device, fn, dtype):
    """Every filter returns logits in their own dtype; values as torch gives them in that dtype."""
    checks.need_dtype(dtype, device)
    logits = logits_case("3d", device, dtype)
    if fn == "apply_temperature":
        args = (logits, 0.7)
    elif fn == "top_k_filter":
        args = (logits, 6)
    elif fn == "top_p_filter":
        args = (logits, 0.8)
    else:
        args = (logits, torch.randint(0, 40, (2, 3, 9), generator=torch.Generator().manual_seed(7)).to(device), 1.3)
    what = describe_call(fn, *args)
    got = rules.call(getattr(sampling, fn), *args, what=what)
    if fn == "top_k_filter":
        keep = torch_top_k_keep(logits, 6)
        expect_filtered(got, logits, keep, keep, what=what, device=device)
    elif fn == "top_p_filter":
        expect_filtered(got, logits, *torch_top_p_keep(logits, 0.8, band_for(dtype)), what=what, device=device)
    elif fn == "apply_temperature":
        expect_close(got, golden(logits) / 0.7, what=what, dtype=dtype, device=device, baseline=logits / 0.7)
    else:
        want = torch_repetition_penalty(golden(logits), golden(args[1]), 1.3)
        baseline = torch_repetition_penalty(logits, args[1], 1.3)
        expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


# ---------------------------------------------------------------- bad arguments


BAD_ARGUMENTS = {
    "temperature_zero": ("apply_temperature", (0.0,), {}),
    "temperature_negative": ("apply_temperature", (-0.5,), {}),
    "top_k_zero": ("top_k_filter", (0,), {}),
    "top_k_negative": ("top_k_filter", (-3,), {}),
    "top_p_zero": ("top_p_filter", (0.0,), {}),
    "top_p_negative": ("top_p_filter", (-0.2,), {}),
    "top_p_above_one": ("top_p_filter", (1.5,), {}),
    "penalty_zero": ("apply_repetition_penalty", ("ids", 0.0), {}),
    "penalty_negative": ("apply_repetition_penalty", ("ids", -1.2), {}),
    "sample_negative_temperature": ("sample", (), {"temperature": -1.0}),
    "sample_top_k_zero": ("sample", (), {"top_k": 0}),
    "sample_top_p_above_one": ("sample", (), {"top_p": 1.2}),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_rejects_bad_arguments(sampling, device, case):
    fn, args, kwargs = BAD_ARGUMENTS[case]
    logits = logits_case("2d", device)
    args = tuple(torch.zeros(4, 3, dtype=torch.long, device=device) if a == "ids" else a for a in args)
    what = describe_call(fn, logits, *args, **kwargs)
    rules.expect_raises(ValueError, getattr(sampling, fn), logits, *args, what=what, **kwargs)


# ---------------------------------------------------------------- sample: shape, greedy, nucleus


def sample_ids(sampling, case, device):
    logits = logits_case(case, device)
    gen = torch.Generator(device=device).manual_seed(0)
    kwargs = {"temperature": 0.8, "top_k": 10, "top_p": 0.9, "generator": gen}
    what = describe_call("sample", logits, **kwargs)
    got = rules.call(sampling.sample, logits, what=what, **kwargs)
    if not isinstance(got, torch.Tensor):
        raise checks.Wrong(f"{what} returned {type(got).__name__}, expected a Tensor")
    return logits, got, what


# Shape and dtype are two checks: each mistake fails its own (and the value checks, which
# check both), so `make check` can tell which one was made.
@pytest.mark.parametrize("case", ["2d", "3d", "4d", "1d", "non_contiguous"])
def test_sample_shape(sampling, device, case):
    """ids of shape logits.shape[:-1] (0-d for one row of logits), on logits' device, valid token ids."""
    logits, got, what = sample_ids(sampling, case, device)
    checks.expect_tensor(got, shape=logits.shape[:-1], dtype=got.dtype, device=device, what=what)
    if got.numel() and not ((got >= 0) & (got < logits.shape[-1])).all():
        raise checks.Wrong(f"{what} returned ids outside [0, {logits.shape[-1]}): {got.cpu().tolist()}")


@pytest.mark.parametrize("case", ["2d", "1d"])
def test_sample_returns_int64(sampling, device, case):
    """int64 ids, torch's dtype for indices (what multinomial, argmax and nn.Embedding use)."""
    _, got, what = sample_ids(sampling, case, device)
    if got.dtype != torch.int64:
        raise checks.Wrong(f"{what} returned dtype {got.dtype}, expected torch.int64")


GREEDY_CASES = {
    "2d": ({}, torch.float32),
    "3d": ({}, torch.float32),
    "4d": ({}, torch.float32),
    "1d": ({}, torch.float32),
    "2d-with_top_k_and_top_p": ({"top_k": 3, "top_p": 0.5}, torch.float32),
    "non_contiguous-with_top_p": ({"top_p": 0.1}, torch.float32),
    "2d-bfloat16": ({"top_k": 5}, torch.bfloat16),
}


@pytest.mark.parametrize("case", list(GREEDY_CASES))
def test_greedy_when_temperature_is_zero(sampling, device, case):
    """temperature=0 is the argmax of each row, whatever top_k and top_p say."""
    kwargs, dtype = GREEDY_CASES[case]
    checks.need_dtype(dtype, device)
    logits = logits_case(case.split("-")[0], device)
    if dtype != torch.float32:  # distinct values in bf16 too, so the argmax is unique
        logits = (torch.randperm(logits.shape[-1], generator=torch.Generator().manual_seed(3)) * 0.25).to(device, dtype).expand(4, -1)
    what = describe_call("sample", logits, temperature=0.0, **kwargs)
    got = rules.call(sampling.sample, logits, temperature=0.0, what=what, **kwargs)
    want = golden(logits).argmax(dim=-1)
    checks.expect_tensor(got, shape=want.shape, dtype=torch.int64, device=device, what=what)
    if not torch.equal(got.cpu(), want):
        raise checks.Wrong(f"{what} returned {got.cpu().tolist()}, expected the argmax of each row {want.tolist()}")


def filtered_probs(logits, temperature, top_k, top_p, band=0.0):
    """(sure, maybe, probs): float64 torch ops in the API's order: temperature, top-k, top-p, softmax."""
    x = golden(logits) / temperature
    keep = torch.ones_like(x, dtype=torch.bool)
    if top_k is not None:
        keep = torch_top_k_keep(x, top_k)
        x = x.masked_fill(~keep, NEG_INF)
    sure = maybe = keep
    if top_p is not None:
        sure, maybe = torch_top_p_keep(x, top_p, band)
    return sure, maybe, torch.softmax(x.masked_fill(~sure, NEG_INF), dim=-1)


NUCLEUS_CASES = {
    "top_p": {"temperature": 0.7, "top_p": 0.8},
    "hot_top_p": {"temperature": 3.0, "top_p": 0.3},
    "top_k": {"temperature": 1.3, "top_k": 5},
    "top_k_and_top_p": {"temperature": 0.9, "top_k": 20, "top_p": 0.6},
}


@pytest.mark.parametrize("case", list(NUCLEUS_CASES))
def test_sample_never_leaves_the_nucleus(sampling, device, case):
    """Over 6400 draws from 64 random rows (a third of each row already -inf), every token
    is one the filters keep."""
    kwargs = NUCLEUS_CASES[case]
    rows = randn(64, 1, 120, seed=8, device=device, scale=2.0)
    rows[..., 1::3] = NEG_INF
    logits = rows.expand(64, 100, 120)  # 100 draws from each row
    gen = torch.Generator(device=device).manual_seed(1)
    what = describe_call("sample", logits, **kwargs, generator=gen)
    got = rules.call(sampling.sample, logits, what=what, **kwargs, generator=gen)
    checks.expect_tensor(got, shape=logits.shape[:-1], dtype=torch.int64, device=device, what=what)
    _, maybe, _ = filtered_probs(rows, **{"top_k": None, "top_p": None, **kwargs}, band=band_for(torch.float32))
    maybe = maybe.expand(64, 100, 120)
    allowed = maybe.gather(-1, got.cpu().clamp(0, 119)[..., None])[..., 0] & (got.cpu() >= 0) & (got.cpu() < 120)
    if not allowed.all():
        row, draw = (int(i) for i in (~allowed).nonzero()[0])
        token = int(got[row, draw])
        raise checks.Wrong(
            f"{what} drew token {token} from row {row} (logit {logits[row, 0, token].item():.4g}), which the filters drop; "
            f"{int((~allowed).sum())} of {allowed.numel()} draws fell outside the nucleus "
            f"(row {row} keeps {int(maybe[row, 0].sum())} tokens)"
        )


# ---------------------------------------------------------------- sample: the distribution

# A chi-square goodness-of-fit test per row: DRAWS draws of the row, counts per token
# compared with DRAWS * the filtered softmax (torch in float64). Tokens expected fewer than
# MIN_EXPECTED times are pooled into one bin so the chi-square approximation holds. The
# draws use a seeded generator, so the verdict is the same on every run; over random
# seeds, a correct implementation would fail a row with probability about SIGNIFICANCE,
# so this whole check (14 cases of 3 rows) about 4e-5 of the time.
DRAWS = 20_000
MIN_EXPECTED = 20
SIGNIFICANCE = 1e-6

DISTRIBUTION_CASES = {
    "plain": ({}, torch.float32),
    "cold": ({"temperature": 0.5}, torch.float32),
    "hot": ({"temperature": 2.0}, torch.float32),
    "top_k": ({"top_k": 4}, torch.float32),
    "top_p": ({"top_p": 0.8}, torch.float32),
    "hot_top_p": ({"temperature": 2.0, "top_p": 0.6}, torch.float32),
    "cold_top_p": ({"temperature": 0.6, "top_p": 0.9}, torch.float32),
    "top_k_then_top_p": ({"top_k": 4, "top_p": 0.75}, torch.float32),
    "hot_top_k_top_p": ({"temperature": 1.5, "top_k": 6, "top_p": 0.7}, torch.float32),
    # top_k of every token keeps them all, so top_p alone decides: applying only one of the
    # two filters fails here, applying them in the wrong order does not.
    "top_k_of_every_token_then_top_p": ({"top_k": 10, "top_p": 0.8}, torch.float32),
    "neg_inf_present": ({"top_p": 0.95}, torch.float32),
    "bfloat16": ({"temperature": 0.8, "top_p": 0.9}, torch.bfloat16),
    "float16": ({"temperature": 0.8, "top_k": 5}, torch.float16),
    "one_token_nucleus": ({"top_p": 0.05}, torch.float32),
}


def distribution_rows(device, dtype, neg_inf=False):
    """(3, 10) logits whose running totals stay clear of the p values above (checked)."""
    rows = randn(3, 10, seed=21, device="cpu", scale=1.5)
    if neg_inf:
        rows[:, [2, 7]] = NEG_INF
    return rows.to(device, dtype)


def chi_square_p_value(observed, expected):
    """P(chi2 >= statistic) for counts against expected counts (both 1-D float64),
    small bins pooled; torch.special.gammaincc is the chi-square survival function."""
    small = expected < MIN_EXPECTED
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
        if expected[-1] < MIN_EXPECTED and len(expected) > 1:  # pool the pool into the smallest bin
            j = int(expected[:-1].argmin())
            observed[j] += observed[-1]
            expected[j] += expected[-1]
            observed, expected = observed[:-1], expected[:-1]
    df = len(expected) - 1
    if df == 0:
        return 1.0, 0.0
    stat = ((observed - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2)), float(stat)


@pytest.mark.parametrize("case", list(DISTRIBUTION_CASES))
def test_sample_matches_filtered_softmax(sampling, device, case):
    kwargs, dtype = DISTRIBUTION_CASES[case]
    checks.need_dtype(dtype, device)
    rows = distribution_rows(device, dtype, neg_inf=case == "neg_inf_present")
    R, V = rows.shape
    full = {"temperature": 1.0, "top_k": None, "top_p": None, **kwargs}
    sure, maybe, probs = filtered_probs(rows, **full, band=1e-3)
    assert torch.equal(sure, maybe), f"grader input for {case} has a running total within 1e-3 of p"
    logits = rows[:, None, :].expand(R, DRAWS, V)  # (R, DRAWS, V): every row drawn DRAWS times
    gen = torch.Generator(device=device).manual_seed(2024)
    what = describe_call("sample", logits, **kwargs, generator=gen)
    got = rules.call(sampling.sample, logits, what=what, **kwargs, generator=gen)
    checks.expect_tensor(got, shape=(R, DRAWS), dtype=torch.int64, device=device, what=what)
    ids = got.cpu()
    if not ((ids >= 0) & (ids < V)).all():
        raise checks.Wrong(f"{what} returned ids outside [0, {V})")
    counts = torch.zeros(R, V, dtype=torch.float64).scatter_add_(1, ids, torch.ones(R, DRAWS, dtype=torch.float64))
    for r in range(R):
        expected = probs[r] * DRAWS
        support = expected > 0
        shown = f"got counts {counts[r].long().tolist()}, expected about {[round(e) for e in expected.tolist()]}"
        if counts[r][~support].any():
            raise checks.Wrong(f"{what} drew tokens of row {r} that the filters drop: {shown}")
        p_value, stat = chi_square_p_value(counts[r][support], expected[support])
        if p_value < SIGNIFICANCE:
            raise checks.Wrong(
                f"{what}: the draws of row {r} do not follow the filtered softmax (temperature, then top-k, then top-p): "
                f"{shown}; chi-square {stat:.1f}, p-value {p_value:.1e} < {SIGNIFICANCE:g}"
            )


# ---------------------------------------------------------------- sample: reproducibility


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.8, "top_k": 30, "top_p": 0.9}], ids=["plain", "filtered"])
def test_sample_reproducible_with_generator(sampling, device, kwargs):
    """Two generators seeded alike give the same tokens; torch's global generator is
    reseeded differently before each call, so code that ignores `generator` shows."""
    logits = randn(8, 50, 64, seed=9, device=device)
    what = describe_call("sample", logits, **kwargs, generator="torch.Generator().manual_seed(7)")
    draws = []
    for global_seed in (1, 2):
        checks.seed_executor(sampling.sample, global_seed)
        gen = torch.Generator(device=device).manual_seed(7)
        draws.append(rules.call(sampling.sample, logits, what=what, **kwargs, generator=gen))
    checks.expect_tensor(draws[0], shape=(8, 50), dtype=torch.int64, device=device, what=what)
    same = (draws[0] == draws[1]).float().mean().item()
    if same < 1:
        raise checks.Wrong(
            f"{what} twice, with generators seeded alike, gave different tokens ({100 * (1 - same):.0f}% differ): "
            "draw every random number from `generator`"
        )
    third = rules.call(sampling.sample, logits, what=what, **kwargs, generator=torch.Generator(device=device).manual_seed(8))
    if torch.equal(third, draws[0]):
        raise checks.Wrong(f"{what} gave the same 400 tokens for generators seeded 7 and 8: is it random at all?")


# ---------------------------------------------------------------- apply_repetition_penalty


def penalty_case(name: str, device, dtype=torch.float32):
    """(logits, prev_ids, penalty) for one named case."""

    def ids(*shape, high, seed):
        return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed)).to(device)

    x = logits_case("2d", device, dtype)  # (4, 50)
    with_zeros = x.clone()
    with_zeros[:, :10] = 0.0
    cases = {
        # The seed notebook's example: token 0 seen twice, 1 and 4 once.
        "worked_example": (torch.tensor([[2.0, 1.5, 0.5, 0.1, -1.0]], dtype=dtype, device=device), torch.tensor([[0, 0, 1, 4]], device=device), 1.5),
        "2d_with_repeats": (x, ids(4, 30, high=20, seed=1), 1.3),
        "3d": (logits_case("3d", device, dtype), ids(2, 3, 12, high=40, seed=2), 2.0),
        "4d": (logits_case("4d", device, dtype), ids(2, 2, 3, 9, high=30, seed=9), 1.6),
        "1d": (logits_case("1d", device, dtype), ids(8, high=25, seed=3), 1.2),
        "penalty_below_one": (x, ids(4, 10, high=50, seed=4), 0.7),
        "zero_logits": (with_zeros, ids(4, 12, high=15, seed=5), 1.5),
        "empty_history": (x, torch.zeros(4, 0, dtype=torch.long, device=device), 1.5),
        "non_contiguous": (logits_case("non_contiguous", device, dtype), ids(10, 4, high=50, seed=6).t(), 1.4),
        "neg_inf_present": (logits_case("neg_inf_present", device, dtype), ids(4, 20, high=30, seed=7), 1.8),
        "penalty_one": (x, ids(4, 10, high=50, seed=8), 1.0),
    }
    return cases[name]


PENALTY_CASES = ["worked_example", "2d_with_repeats", "3d", "4d", "1d", "penalty_below_one", "zero_logits",
                 "empty_history", "non_contiguous", "neg_inf_present", "penalty_one"]  # fmt: skip


@pytest.mark.parametrize("case", PENALTY_CASES)
def test_repetition_penalty_matches_torch(sampling, device, case):
    """Positive logits of seen tokens divided, the others multiplied, once per token."""
    logits, prev_ids, penalty = penalty_case(case, device)
    what = describe_call("apply_repetition_penalty", logits, prev_ids, penalty)
    got = rules.call(sampling.apply_repetition_penalty, logits, prev_ids, penalty, what=what)
    want = torch_repetition_penalty(golden(logits), golden(prev_ids), penalty)
    baseline = torch_repetition_penalty(logits, prev_ids, penalty)
    expect_close(got, want, what=what, dtype=logits.dtype, device=device, baseline=baseline)


# ---------------------------------------------------------------- work


def call_at(fn: str, lead: tuple[int, ...], V: int, N: int, device):
    """(function, args, kwargs) calling `fn` on (*lead, V) logits (and (*lead, N) previous ids)."""
    logits = randn(*lead, V, seed=10, device=device, scale=2.0)
    gen = torch.Generator(device=device).manual_seed(0)
    prev = torch.randint(0, V, (*lead, N), generator=torch.Generator().manual_seed(11)).to(device)
    return {
        "apply_temperature": ((logits, 0.7), {}),
        "top_k_filter": ((logits, 5), {}),
        "top_p_filter": ((logits, 0.9), {}),
        "sample": ((logits,), {"temperature": 0.8, "top_k": 10, "top_p": 0.9, "generator": gen}),
        "apply_repetition_penalty": ((logits, prev, 1.3), {}),
    }[fn]


WORK_FUNCTIONS = ["apply_temperature", "top_k_filter", "top_p_filter", "sample", "apply_repetition_penalty"]


@pytest.mark.parametrize("fn", WORK_FUNCTIONS)
def test_no_loop_over_rows(sampling, device, fn):
    def ops(lead):
        args, kwargs = call_at(fn, lead, 40, 6, device)
        return rules.count_ops(getattr(sampling, fn), *args, **kwargs)

    checks.expect_same_op_count(
        partial(ops, (2, 3)), partial(ops, (5, 4)), what=fn, small_desc="logits (2, 3, 40)", large_desc="logits (5, 4, 40)"
    )


@pytest.mark.parametrize("fn", WORK_FUNCTIONS)
def test_no_loop_over_tokens(sampling, device, fn):
    def ops(V, N):
        args, kwargs = call_at(fn, (2, 3), V, N, device)
        return rules.count_ops(getattr(sampling, fn), *args, **kwargs)

    checks.expect_same_op_count(
        partial(ops, 40, 4), partial(ops, 150, 12), what=fn, small_desc="V=40 (4 previous ids)", large_desc="V=150 (12 previous ids)"
    )


# ---------------------------------------------------------------- speed


def test_speed(sampling, reference_sampling, device, record_property):
    """top_k_filter on (256, 32000) logits, a vocabulary the size of Llama 2's.

    The other functions are not timed: top_p_filter and sample cost one sort and one
    multinomial draw however they are written (a second or more per call on a CPU), and
    apply_repetition_penalty is as fast as one copy of the logits in the reference, so a
    correct presence-mask version measures 10-25x; loops in any of them are caught
    deterministically by the op counts instead."""
    logits = randn(256, 32000, seed=12, device=device, scale=3.0)
    limit = TOPIC.speed[device.type]
    ratio = rules.speed_ratio(
        partial(sampling.top_k_filter, logits, 50), partial(reference_sampling.top_k_filter, logits, 50), device=device, near=limit
    )
    record_property("speed_ratio", round(ratio, 3))
    checks.expect_fast_enough(ratio, limit, what="top_k_filter((256, 32000) logits, k=50)", device=device)
