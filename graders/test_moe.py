"""Grader for the moe kata: TopKRouter, load_balancing_loss, MoE.

Every value is checked against a dense computation written here with torch's own ops in
float64 (F.linear, torch.topk, torch.softmax, every expert run on every token and the chosen
ones gathered), from the learner's own seeded weights; the capacity rule against a plain
token-by-token reading of it; gradients to the input, the gate and every expert against
autograd on that dense float64 computation. float32 tolerances are widened by the error the
same dense computation makes in float32; bfloat16 and float16 by 4x its error in that dtype. Work: forward hooks count each expert's calls and
the tokens it sees, FlopCounterMode measures the matmul work against k / n_experts of the
dense work, and aten op counts at two token counts show there is no loop over tokens.
No speed check: the efficiency lesson (sparse dispatch) is graded by the work checks, which
are deterministic on every device.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course, harness
from kata.checks import describe, describe_call, expect_close, expect_tensor, golden, randn

TOPIC = course.get("moe")
rules = checks.Rules(TOPIC.forbidden)
EXPERT_PARAMS = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")


@pytest.fixture(scope="module")
def moe(impl):
    return impl.load("moe")


# ---------------------------------------------------------------- the dense float64 reference


def expert_forward(p: dict, e: int, x):
    """Expert e of a MoE state dict on x (M, D): down(silu(gate(x)) * up(x))."""
    w = {n: p[f"experts.{e}.{n}"] for n in EXPERT_PARAMS}
    return F.linear(F.silu(F.linear(x, w["gate_proj.weight"])) * F.linear(x, w["up_proj.weight"]), w["down_proj.weight"])


def route(gate_weight, flat, k):
    """(weights, indices, logits) the way the kata defines them: top-k logits, softmax over those k."""
    logits = F.linear(flat, gate_weight)  # (N, E)
    top, indices = logits.topk(k, dim=-1)
    return top.softmax(dim=-1), indices, logits


def expect_clear_routing(logits, k):
    """Grader sanity: no token has a near-tie at its k-th choice (float32 rounding could pick either)."""
    if k == logits.shape[-1]:
        return
    top = logits.detach().topk(k + 1, dim=-1).values
    gap = (top[:, k - 1] - top[:, k]).min().item()
    if gap < 1e-4:
        raise RuntimeError(f"grader bug: a near-tie in the routing (gap {gap:.2g}); change the seed")


def torch_lb_loss(logits, indices, n_experts):
    """n_experts * sum_e f_e * P_e, straight from the definition."""
    f = F.one_hot(indices.reshape(-1), n_experts).to(logits.dtype).mean(dim=0)  # (E,) fractions of N*k
    p = logits.softmax(dim=-1).mean(dim=0)  # (E,)
    return n_experts * (f * p).sum()


def kept_assignments(indices, n_experts, capacity_factor):
    """(N, k) bool: which assignments survive the capacity rule, read token by token in order."""
    n, k = indices.shape
    keep = torch.ones(n, k, dtype=torch.bool)
    if capacity_factor is None:
        return keep
    capacity = math.ceil(capacity_factor * n * k / n_experts)
    taken = [0] * n_experts
    for t in range(n):
        for s in range(k):
            e = int(indices[t, s])
            keep[t, s] = taken[e] < capacity
            taken[e] += 1
    return keep


def torch_moe(p: dict, x, n_experts, k, capacity_factor=None, *, indices=None):
    """(y, aux, indices, keep) of the MoE with state dict p on x (B, T, D), computed densely:
    every expert on every token, then the chosen ones gathered and weighted. `indices`
    imposes the routing (that of a half-precision computation, whose rounded logits decide)."""
    B, T, D = x.shape
    flat = x.reshape(B * T, D)
    weights, chosen, logits = route(p["router.gate.weight"], flat, k)
    if indices is None:
        indices = chosen
        expect_clear_routing(logits, k)
    else:
        indices = indices.to(x.device)
        weights = logits.gather(-1, indices).softmax(dim=-1)
    keep = kept_assignments(indices.cpu(), n_experts, capacity_factor).to(x.device)
    dense = torch.stack([expert_forward(p, e, flat) for e in range(n_experts)], dim=1)  # (N, E, D)
    chosen = dense.gather(1, indices[..., None].expand(-1, -1, D))  # (N, k, D)
    y = (chosen * (weights * keep)[..., None]).sum(dim=1)
    return y.reshape(B, T, D), torch_lb_loss(logits, indices, n_experts), indices, keep


# ---------------------------------------------------------------- the learner's objects


def moe_state(m) -> dict:
    """The module's state dict, with a readable failure if it is not laid out as asked."""
    sd = {n: t.detach() for n, t in m.state_dict().items()}
    n_experts = len(m.experts)
    want = {"router.gate.weight"} | {f"experts.{e}.{n}" for e in range(n_experts) for n in EXPERT_PARAMS}
    if set(sd) != want:
        missing, extra = sorted(want - set(sd)), sorted(set(sd) - want)
        raise checks.Wrong(
            f"{checks.type_name(m)}'s state_dict has {'missing ' + str(missing) if missing else ''}"
            f"{' and ' if missing and extra else ''}{'unexpected ' + str(extra) if extra else ''}: "
            "expected router.gate.weight and, per expert, experts.<i>.gate_proj/up_proj/down_proj.weight "
            "(experts an nn.ModuleList of Expert, the gate a Linear without bias)"
        )
    return sd


def make_moe(mod, device, *, d_model=16, d_hidden=24, n_experts=4, k=2, capacity_factor=None, skew=None, dead=(), dtype=torch.float32, seed=0):
    """The learner's MoE with seeded weights. `skew` {expert: s} adds s * u to the gate row of
    that expert, u the direction every token leans towards (see tokens()): s > 0 makes the
    expert popular, s < 0 makes it never chosen."""
    kwargs = {} if capacity_factor is None else {"capacity_factor": capacity_factor}
    what = describe_call("MoE", d_model, d_hidden, n_experts, k, **kwargs)
    m = rules.call(mod.MoE, d_model, d_hidden, n_experts, k, what=what, **kwargs)
    names = sorted(moe_state(m))
    seeded = {}
    for i, name in enumerate(names):
        shape = (n_experts, d_model) if name == "router.gate.weight" else None
        if shape is None:
            out_f, in_f = (d_model, d_hidden) if name.endswith("down_proj.weight") else (d_hidden, d_model)
            shape = (out_f, in_f)
        seeded[name] = randn(*shape, seed=seed + 100 + i, scale=shape[1] ** -0.5, device="cpu")
    if skew:
        u = lean(d_model)
        for e, s in skew.items():
            seeded["router.gate.weight"][e] += s * u
    for e in dead:
        seeded[f"experts.{e}.down_proj.weight"].zero_()
    rules.call(harness.assign_parameters, m, seeded)
    return m.to(device=device, dtype=dtype), what


def lean(d_model):
    return randn(d_model, seed=77, device="cpu") * d_model**-0.5


def tokens(B, T, d_model, device, *, seed, scale=1.0, dtype=torch.float32, lean_by=0.0, transposed=False):
    """x (B, T, d_model); `transposed` makes it a non-contiguous view of a (T, B, d) tensor."""
    if transposed:
        x = randn(T, B, d_model, seed=seed, device="cpu", dtype=torch.float64).transpose(0, 1)
    else:
        x = randn(B, T, d_model, seed=seed, device="cpu", dtype=torch.float64)
    x = x * scale + lean_by * lean(d_model).double() * d_model**0.5
    return x.to(device=device, dtype=dtype)


# name: MoE config, x config
MOE_CASES = {
    "top2_of_4": (dict(), dict(B=2, T=5)),
    "top1_switch": (dict(k=1), dict(B=2, T=6)),
    "every_expert": (dict(n_experts=3, k=3), dict(B=2, T=4)),
    "top2_of_8": (dict(n_experts=8, k=2), dict(B=3, T=7)),
    "single_token": (dict(), dict(B=1, T=1)),
    "non_contiguous": (dict(), dict(B=3, T=4, transposed=True)),
    "large_inputs": (dict(), dict(B=2, T=5, scale=30.0)),
    "expert_never_chosen": (dict(skew={3: -6.0}), dict(B=2, T=6, lean_by=1.0)),
    "float64": (dict(dtype=torch.float64), dict(B=2, T=5, dtype=torch.float64)),
    # Every expert but the last outputs zeros (dead experts): y is the last expert's weighted output.
    "dead_experts": (dict(dead=(0, 1, 2)), dict(B=2, T=5)),
}

# Skewed towards expert 0 so that its queue overflows; N * k / E worked out in each comment.
CAPACITY_CASES = {
    "c=1_popular_expert": (dict(capacity_factor=1.0, skew={0: 3.0}), dict(B=2, T=8, lean_by=1.0)),  # ceil(32/4) = 8
    "c=0.5_rounds_up": (dict(capacity_factor=0.5), dict(B=1, T=9)),  # ceil(0.5 * 18 / 4) = ceil(2.25) = 3
    "c=1.25_top1": (dict(capacity_factor=1.25, k=1, skew={1: 3.0}), dict(B=3, T=4, lean_by=1.0)),  # ceil(3.75) = 4
    "c=8_nothing_dropped": (dict(capacity_factor=8.0, skew={0: 3.0}), dict(B=2, T=8, lean_by=1.0)),
    # Experts 0 and 1 are every token's choice: the late tokens lose both slots.
    "c=1_two_popular_experts": (dict(capacity_factor=1.0, skew={0: 4.0, 1: 4.0}), dict(B=2, T=4, lean_by=1.0)),  # ceil(16/4) = 4
    "c=0.5_capacity_one": (dict(capacity_factor=0.5), dict(B=1, T=4)),  # ceil(0.5 * 8 / 4) = 1
}


def moe_case(mod, name, device):
    cfg, xcfg = {**MOE_CASES, **CAPACITY_CASES}[name]
    cfg, xcfg = dict(cfg), dict(xcfg)
    dtype = cfg.get("dtype", torch.float32)
    m, what = make_moe(mod, device, **cfg)
    x = tokens(xcfg.pop("B"), xcfg.pop("T"), cfg.get("d_model", 16), device, seed=len(name), **xcfg)
    return m, x, cfg.get("n_experts", 4), cfg.get("k", 2), cfg.get("capacity_factor"), dtype, f"{what}.forward({describe(x)})"


def call_moe(m, x, what):
    out = rules.call(m, x, what=what)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise checks.Wrong(f"{what} returned {describe(out)}; expected a tuple (y, aux_loss)")
    return out


def expect_moe_outputs(got, m, x, n_experts, k, capacity_factor, dtype, what, *, check_aux=True):
    y, aux = got
    p = moe_state(m)
    want_y, want_aux, _, _ = torch_moe({n: golden(t) for n, t in p.items()}, golden(x), n_experts, k, capacity_factor)
    base_y, base_aux, _, _ = torch_moe({n: t.to(dtype) for n, t in p.items()}, x, n_experts, k, capacity_factor)
    expect_close(y, want_y, what=f"y of {what}", dtype=dtype, device=x.device, baseline=base_y)
    if check_aux:
        expect_close(aux, want_aux, what=f"aux_loss of {what}", dtype=dtype, device=x.device, baseline=base_aux)


# ---------------------------------------------------------------- TopKRouter


def make_router(mod, device, d_model, n_experts, k, *, seed=0):
    what = describe_call("TopKRouter", d_model, n_experts, k)
    r = rules.call(mod.TopKRouter, d_model, n_experts, k, what=what)
    rules.call(harness.assign_parameters, r, {"gate.weight": randn(n_experts, d_model, seed=seed + 5, scale=d_model**-0.5, device="cpu")})
    return r.to(device), what


@pytest.mark.parametrize("d_model, n_experts, k", [(8, 4, 2), (12, 6, 1)], ids=["8,4,2", "12,6,1"])
def test_router_layout(moe, d_model, n_experts, k):
    """The gate is Linear(d_model, n_experts, bias=False), the router's only parameter."""
    what = describe_call("TopKRouter", d_model, n_experts, k)
    r = rules.call(moe.TopKRouter, d_model, n_experts, k, what=what)
    if not checks.is_instance(r.gate, torch.nn.Linear):
        raise checks.Wrong(f"{what}.gate is {checks.type_name(r.gate)}; expected an nn.Linear")
    shapes = {n: tuple(p.shape) for n, p in r.named_parameters()}
    if shapes != {"gate.weight": (n_experts, d_model)}:
        raise checks.Wrong(f"{what} has parameters {shapes}; expected only gate.weight of shape {(n_experts, d_model)} (no bias)")


@pytest.mark.parametrize("k", [0, 5], ids=["k=0", "k=5"])
def test_router_rejects_k_out_of_range(moe, k):
    rules.expect_raises(ValueError, moe.TopKRouter, 8, 4, k, what=describe_call("TopKRouter", 8, 4, k))


ROUTER_CASES = {
    "top2_of_4": (8, 4, 2, dict(N=10)),
    "top1": (8, 4, 1, dict(N=10)),
    "every_expert": (8, 3, 3, dict(N=6)),
    "top3_of_8": (16, 8, 3, dict(N=12)),
    "large_logits": (8, 4, 2, dict(N=10, scale=300.0)),
    "non_contiguous": (8, 4, 2, dict(N=10, transposed=True)),
}


def router_input(name, d_model, device, N, scale=1.0, transposed=False):
    x = randn(d_model, N, seed=len(name), device=device, scale=scale).t() if transposed else randn(N, d_model, seed=len(name), device=device, scale=scale)
    return x


def expect_router(got, r, x, k, what):
    if not (isinstance(got, tuple) and len(got) == 3):
        raise checks.Wrong(f"{what} returned {describe(got)}; expected a tuple (weights, indices, logits)")
    weights, indices, logits = got
    gate = r.gate.weight.detach()
    want_w, want_i, want_l = route(golden(gate), golden(x), k)
    base_w, _, base_l = route(gate, x, k)
    expect_clear_routing(want_l, k)
    n, e = want_l.shape
    expect_close(logits, want_l, what=f"logits of {what}", dtype=x.dtype, device=x.device, baseline=base_l)
    expect_tensor(indices, shape=(n, k), dtype=torch.int64, device=x.device, what=f"indices of {what}")
    if not torch.equal(indices.cpu(), want_i):
        row = int((indices.cpu() != want_i).any(dim=1).nonzero()[0])
        raise checks.Wrong(
            f"indices of {what}, token {row}: got {indices[row].tolist()}, expected {want_i[row].tolist()} "
            f"(the experts of the {k} largest logits, largest first; logits {[round(v, 3) for v in want_l[row].tolist()]})"
        )
    expect_close(weights, want_w, what=f"weights of {what} (softmax over the top-{k} logits)", dtype=x.dtype, device=x.device, baseline=base_w)


@pytest.mark.parametrize("case", list(ROUTER_CASES))
def test_router_matches_reference(moe, device, case):
    d_model, n_experts, k, xcfg = ROUTER_CASES[case]
    r, what = make_router(moe, device, d_model, n_experts, k)
    x = router_input(case, d_model, device, **xcfg)
    what = f"{what}.forward({describe(x)})"
    expect_router(rules.call(r, x, what=what), r, x, k, what)


def router_backward(router, x, upstream):
    """Runs in the executor: the router's forward, and backward of sum(weights * upstream)."""
    weights = router(x)[0]
    if not (isinstance(weights, torch.Tensor) and weights.requires_grad):
        return "no graph"
    weights.backward(upstream)
    return x.grad  # a helper's backward does not send x.grad back by itself


@pytest.mark.parametrize("case", ["top2_of_4", "top3_of_8"])
def test_router_weights_carry_gradient(moe, device, case):
    """The weights are differentiable with respect to the gate (and x): training the gate
    depends on it. Compared with autograd through torch.topk and softmax in float64."""
    d_model, n_experts, k, xcfg = ROUTER_CASES[case]
    r, what = make_router(moe, device, d_model, n_experts, k)
    x = router_input(case, d_model, device, **xcfg).requires_grad_()
    upstream = randn(xcfg["N"], k, seed=31, device=device)
    what = f"{what}.forward({describe(x)}) then backward from the weights"
    x_grad = rules.call(router_backward, r, x, upstream, what=what)
    if isinstance(x_grad, str):
        raise checks.Wrong(f"{what}: the weights do not require grad; they must stay differentiable (no detach, no no_grad)")
    gate = dict(r.named_parameters())["gate.weight"]
    gx, gw = golden(x), golden(gate.detach()).requires_grad_()
    want = torch.autograd.grad(route(gw, gx, k)[0], (gx, gw), golden(upstream))
    bx, bw = x.detach().requires_grad_(), gate.detach().clone().requires_grad_()
    base = torch.autograd.grad(route(bw, bx, k)[0], (bx, bw), upstream)
    for name, g, w, b in (("x", x_grad, want[0], base[0]), ("gate.weight", gate.grad, want[1], base[1])):
        if g is None:
            raise checks.Wrong(f"after {what}, {name}.grad is None: no gradient flows through the weights (detached?)")
        expect_close(g, w, what=f"{name}.grad after {what}", dtype=torch.float32, device=device, baseline=b)


# ---------------------------------------------------------------- load_balancing_loss


def lb_case(name, device):
    """(logits, indices, n_experts) for one named case."""
    g = torch.Generator().manual_seed(len(name))
    if name == "last_expert_unused":
        logits = randn(10, 5, seed=3, device=device)
        indices = torch.randint(0, 4, (10, 2), generator=g)
        indices[:, 1] = (indices[:, 0] + 1) % 4  # two distinct experts per token, never expert 4
        return logits, indices.to(device), 5
    if name == "uniform_every_expert":  # f = P = 1/E: the loss is 1
        return torch.zeros(6, 4, device=device), torch.arange(4).repeat(6, 1).to(device), 4
    if name == "uniform_logits":  # P = 1/E whatever the routing: the loss is 1
        indices = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(4)])
        return torch.zeros(4, 4, device=device), indices.to(device), 4
    if name == "one_expert":  # E = 1: the loss is 1 whatever the logits
        return randn(5, 1, seed=8, device=device), torch.zeros(5, 1, dtype=torch.int64, device=device), 1
    n, e, k, scale = {"top2": (12, 4, 2, 1.0), "top1": (9, 6, 1, 1.0), "single_token": (1, 4, 2, 1.0),
                      "large_logits": (12, 4, 2, 1000.0), "top3_of_8": (16, 8, 3, 2.0)}[name]  # fmt: skip
    logits = randn(n, e, seed=4 + n, device=device, scale=scale)
    return logits, logits.topk(k, dim=-1).indices, e


LB_CASES = ["top2", "top1", "single_token", "large_logits", "top3_of_8", "last_expert_unused", "uniform_every_expert", "uniform_logits", "one_expert"]


@pytest.mark.parametrize("case", LB_CASES)
def test_load_balancing_loss_matches_formula(moe, device, case):
    logits, indices, n_experts = lb_case(case, device)
    what = describe_call("load_balancing_loss", logits, indices, n_experts)
    got = rules.call(moe.load_balancing_loss, logits, indices, n_experts, what=what)
    want = torch_lb_loss(golden(logits), indices.cpu(), n_experts)
    expect_close(got, want, what=what, dtype=logits.dtype, device=device, baseline=torch_lb_loss(logits, indices, n_experts))


@pytest.mark.parametrize("case", ["top2", "top3_of_8"])
def test_load_balancing_loss_gradient(moe, device, case):
    """The gradient reaches the logits through P (the mean softmax) only; f is a count."""
    logits, indices, n_experts = lb_case(case, device)
    logits = logits.requires_grad_()
    what = describe_call("load_balancing_loss", logits, indices, n_experts) + ".backward()"
    upstream = torch.tensor(1.5, device=device)
    rules.call(moe.load_balancing_loss, logits, indices, n_experts, what=what, backward=upstream)
    if logits.grad is None:
        raise checks.Wrong(f"after {what}, logits.grad is None: the loss must be differentiable through P")
    gl = golden(logits)
    want = torch.autograd.grad(torch_lb_loss(gl, indices.cpu(), n_experts), gl, golden(upstream))[0]
    bl = logits.detach().requires_grad_()
    base = torch.autograd.grad(torch_lb_loss(bl, indices, n_experts), bl, upstream)[0]
    expect_close(logits.grad, want, what=f"logits.grad after {what}", dtype=torch.float32, device=device, baseline=base)


# ---------------------------------------------------------------- MoE values


def test_moe_layout(moe):
    """router is a TopKRouter; experts an nn.ModuleList of n_experts Expert modules; nothing else."""
    what = describe_call("MoE", 16, 24, 5, 2)
    m = rules.call(moe.MoE, 16, 24, 5, 2, what=what)
    if checks.type_name(m.router) != "TopKRouter":
        raise checks.Wrong(f"{what}.router is {checks.type_name(m.router)}; expected a TopKRouter")
    if not checks.is_instance(m.experts, torch.nn.ModuleList):
        raise checks.Wrong(f"{what}.experts is {checks.type_name(m.experts)}; expected an nn.ModuleList (a list's modules are not registered)")
    kinds = [checks.type_name(e) for e in m.experts]
    if kinds != ["Expert"] * 5:
        raise checks.Wrong(f"{what}.experts holds {kinds}; expected 5 Expert modules (the given class)")
    shapes = {n: tuple(t.shape) for n, t in moe_state(m).items()}
    if shapes["router.gate.weight"] != (5, 16) or shapes["experts.0.down_proj.weight"] != (16, 24):
        raise checks.Wrong(f"{what} has parameter shapes {shapes}")


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_moe_matches_dense_reference(moe, device, case):
    m, x, n_experts, k, capacity_factor, dtype, what = moe_case(moe, case, device)
    got = call_moe(m, x, what)
    expect_moe_outputs(got, m, x, n_experts, k, capacity_factor, dtype, what)


def expect_drops(m, x, n_experts, k, capacity_factor, should_drop):
    """Grader sanity: the case drops assignments (or, for the large factor, none)."""
    p = {n: golden(t) for n, t in moe_state(m).items()}
    keep = torch_moe(p, golden(x), n_experts, k, capacity_factor)[3]
    dropped = int((~keep).sum())
    if bool(dropped) != should_drop:
        raise RuntimeError(f"grader bug: the capacity case drops {dropped} assignments")


@pytest.mark.parametrize("case", list(CAPACITY_CASES))
def test_capacity_drops_latest_assignments(moe, device, case):
    """Each expert keeps the earliest tokens' assignments up to ceil(c * N * k / E)."""
    m, x, n_experts, k, c, dtype, what = moe_case(moe, case, device)
    expect_drops(m, x, n_experts, k, c, should_drop=c < 8)
    got = call_moe(m, x, what)
    expect_moe_outputs(got, m, x, n_experts, k, c, dtype, what, check_aux=False)


@pytest.mark.parametrize("case", ["c=1_popular_expert", "c=1.25_top1"])
def test_aux_loss_counts_dropped_assignments(moe, device, case):
    """aux_loss is the load-balancing loss of every assignment the router made, dropped or not."""
    m, x, n_experts, k, c, dtype, what = moe_case(moe, case, device)
    y, aux = call_moe(m, x, what)
    p = {n: golden(t) for n, t in moe_state(m).items()}
    _, want, _, _ = torch_moe(p, golden(x), n_experts, k, c)
    _, base, _, _ = torch_moe(moe_state(m), x, n_experts, k, c)
    expect_close(aux, want, what=f"aux_loss of {what} (before the capacity drop)", dtype=dtype, device=device, baseline=base)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_moe_low_precision(moe, device, dtype):
    """A half-precision MoE returns y and aux_loss in that dtype, within 4x the error the
    dense computation makes in it. The routing is the one the rounded logits decide."""
    checks.need_dtype(dtype, device)
    m, x, n_experts, k, c, _, what = moe_case(moe, "top2_of_4", device)
    m, x = m.to(dtype=dtype), x.to(dtype)
    what = what.replace("float32", str(dtype).removeprefix("torch."))
    low = moe_state(m)
    base_y, base_aux, indices, _ = torch_moe(low, x, n_experts, k, c, indices=route(low["router.gate.weight"], x.reshape(-1, x.shape[-1]), k)[1])
    top = F.linear(x.reshape(-1, x.shape[-1]), low["router.gate.weight"]).topk(k + 1, dim=-1).values
    if (top[:, k - 1] == top[:, k]).any():
        raise RuntimeError("grader bug: a tie in the half-precision routing; change the seed")
    want_y, want_aux, _, _ = torch_moe({n: golden(t) for n, t in low.items()}, golden(x), n_experts, k, c, indices=indices.cpu())
    y, aux = call_moe(m, x, what)
    expect_close(y, want_y, what=f"y of {what}", dtype=dtype, device=device, baseline=base_y)
    expect_close(aux, want_aux, what=f"aux_loss of {what}", dtype=dtype, device=device, baseline=base_aux)


# ---------------------------------------------------------------- MoE gradients


def moe_backward(m, x, upstream, aux_weight):
    """Runs in the executor: forward, then backward of sum(y * upstream) + aux_weight * aux_loss."""
    y, aux = m(x)
    objective = (y * upstream).sum() + aux_weight * aux
    if not objective.requires_grad:
        return "no graph"
    objective.backward()
    return x.grad  # a helper's backward does not send x.grad back by itself


@pytest.mark.parametrize("case", ["top2_of_4", "expert_never_chosen", "c=1_popular_expert"])
def test_moe_gradients(moe, device, case):
    """Gradients of sum(y * upstream) + 0.5 * aux_loss reach x, the gate and every expert
    that got tokens (an expert with none may have no .grad), as autograd on the dense
    float64 computation gives them."""
    m, x, n_experts, k, c, dtype, what = moe_case(moe, case, device)
    x = x.detach().requires_grad_()
    upstream = randn(*x.shape, seed=41, device=device)
    what = f"{what} then backward of sum(y * upstream) + 0.5 * aux_loss"
    x_grad = rules.call(moe_backward, m, x, upstream, 0.5, what=what)
    if isinstance(x_grad, str):
        raise checks.Wrong(f"{what}: neither y nor aux_loss requires grad; is the forward run under no_grad or detached?")
    params = dict(m.named_parameters())
    state = moe_state(m)

    def reference(p, xx, up):
        leaves = {n: t.detach().clone().requires_grad_() for n, t in p.items()}
        xx = xx.detach().clone().requires_grad_()
        y, aux, _, _ = torch_moe(leaves, xx, n_experts, k, c)
        grads = torch.autograd.grad((y * up).sum() + 0.5 * aux, [xx, *leaves.values()])
        return dict(zip(["x", *leaves], grads))

    want = reference({n: golden(t) for n, t in state.items()}, golden(x), golden(upstream))
    base = reference(state, x, upstream)
    for name in want:
        g = x_grad if name == "x" else params[name].grad
        if g is None:
            if name != "x" and not want[name].any():
                continue  # an expert that got no tokens
            raise checks.Wrong(f"after {what}, {name}.grad is None: no gradient reaches it")
        expect_close(g, want[name], what=f"{name}.grad after {what}", dtype=torch.float32, device=device, baseline=base[name])


# ---------------------------------------------------------------- work


class ExpertCalls:
    """Forward pre-hooks on every expert, in the executor: the input of each call, per expert."""

    def __init__(self, m):
        self.inputs = [[] for _ in m.experts]
        self.handles = [e.register_forward_pre_hook(partial(self._record, i)) for i, e in enumerate(m.experts)]

    def _record(self, i, module, args):
        self.inputs[i].append(args[0].detach().clone() if args and isinstance(args[0], torch.Tensor) else None)

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("case", ["top2_of_8", "c=1_popular_expert"])
def test_each_expert_runs_once_on_its_tokens(moe, device, case):
    """Each expert is called at most once per forward, on the rows of exactly the tokens
    routed to it (and kept by the capacity rule): never a token with a zero weight."""
    m, x, n_experts, k, c, dtype, what = moe_case(moe, case, device)
    spy = rules.call(ExpertCalls, m)
    try:
        call_moe(m, x, what)
        inputs = spy.inputs
    finally:
        spy.remove()
    p = {n: golden(t) for n, t in moe_state(m).items()}
    _, _, indices, keep = torch_moe(p, golden(x), n_experts, k, c)
    flat = x.reshape(-1, x.shape[-1]).cpu()
    for e, calls in enumerate(inputs):
        want = sorted(int(t) for t in ((indices == e) & keep).any(dim=1).nonzero().flatten())
        if len(calls) > 1:
            raise checks.Wrong(f"{what} called experts[{e}] {len(calls)} times; expected once, on all its tokens together")
        rows = calls[0] if calls else torch.zeros(0, x.shape[-1])
        if rows is None or rows.dim() != 2 or rows.shape[-1] != x.shape[-1]:
            raise checks.Wrong(f"{what} called experts[{e}] with {describe(rows)}; expected the (M, {x.shape[-1]}) rows of its tokens")
        match = (rows.cpu()[:, None, :] == flat[None, :, :]).all(dim=-1)  # (M, N)
        got = sorted(int(row.nonzero()[0]) if row.any() else -1 for row in match)
        if got != want:
            seen = "rows that are no token of x" if -1 in got else f"tokens {got}"
            raise checks.Wrong(
                f"{what} ran experts[{e}] on {seen}; expected exactly the tokens routed to it"
                f"{' and kept by the capacity' if c else ''}: {want} (flattened B * T positions)"
            )


def test_moe_flops_are_sparse(moe, device):
    """8 experts, k = 2, 32 tokens: the matmul work is the gate's plus k / n_experts = 1/4
    of running every expert on every token (within 10%)."""
    d, h, e, k, n = 16, 32, 8, 2, 32
    m, what = make_moe(moe, device, d_model=d, d_hidden=h, n_experts=e, k=k)
    x = tokens(2, n // 2, d, device, seed=5)
    flops = rules.count_flops(m, x)
    gate = 2 * n * d * e
    sparse = 3 * 2 * n * k * d * h  # three (tokens x d x h) matmuls per assignment
    dense = 3 * 2 * n * e * d * h
    if flops > 1.1 * (gate + sparse):
        raise checks.Wrong(
            f"{what}.forward({describe(x)}) did {flops:,} FLOPs; the gate and the chosen experts need "
            f"{gate + sparse:,}, and every expert on every token {gate + dense:,}: run each expert on its tokens only"
        )
    if flops < 0.9 * (gate + sparse):
        raise checks.Wrong(f"{what}.forward({describe(x)}) did only {flops:,} FLOPs; expected about {gate + sparse:,}: is every chosen expert run?")


def moe_ops(moe, device, n_tokens):
    m, _ = make_moe(moe, device, n_experts=4, k=2)
    x = tokens(1, n_tokens, 16, device, seed=n_tokens)
    p = {n: golden(t) for n, t in moe_state(m).items()}
    _, _, indices, _ = torch_moe(p, golden(x), 4, 2)
    if indices.unique().numel() != 4:
        raise RuntimeError("grader bug: an expert gets no token in the op-count case")
    return rules.count_ops(m, x)


def test_moe_no_loop_over_tokens(moe, device):
    """The same aten ops for 8 tokens as for 64 (every expert gets tokens at both sizes):
    a loop over the experts is fine, a loop over tokens or assignments is not."""
    checks.expect_same_op_count(
        partial(moe_ops, moe, device, 8), partial(moe_ops, moe, device, 64),
        what="MoE(16, 24, 4, 2).forward", small_desc="8 tokens", large_desc="64 tokens",
    )  # fmt: skip
