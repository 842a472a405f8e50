"""Grader for the modules kata: Linear, MLP, RunningMean and count_parameters.

What parameters(), buffers() and state_dict() see (names, shapes, dtypes, requires_grad);
Linear's initialisation checked statistically against nn.Linear's U(-1/sqrt(in), 1/sqrt(in))
(exact bounds, a Kolmogorov-Smirnov distance with the DKW bound: a correct layer fails with
probability below 1e-6 however it orders its draws), reproducible under torch.manual_seed;
values and gradients against F.linear in float64, half precision against torch's own
error; nn.Linear's state_dict loaded into Linear and back; the MLP's ModuleList, one
activation per hidden layer, none after the last layer, its state_dict round trip;
RunningMean's persistent buffers (count and mean over every row seen, only in training,
outside autograd, cast and moved by .to(), resumed exactly from a state_dict); and
count_parameters on grader-built models with frozen, tied and buffer-holding parts.
Rules (no F.linear or aten linear op; inputs and module state unmodified unless the
docstring says so) apply to every call; op counts catch a loop over rows.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("modules")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def mod(impl):
    return impl.load("modules")


def make_x(*shape, seed, device, dtype=torch.float32, scale=1.0, offset=0.0):
    return (randn(*shape, seed=seed, device="cpu", dtype=torch.float64, scale=scale) + offset).to(device=device, dtype=dtype)


def load_state_dict(m, saved: dict, *, what: str) -> None:
    """m.load_state_dict(saved) under the rules; a refusal (missing or unexpected keys, wrong
    shapes) is the learner's layout, reported as WRONG."""
    try:
        rules.call(m.load_state_dict, saved, what=what)
    except RuntimeError as exc:
        if isinstance(exc, NotImplementedError):
            raise
        raise checks.Wrong(f"{what} refused: {str(exc).strip().splitlines()[0][:300]}") from None


def named_parameters(m) -> dict:
    return dict(m.named_parameters())


def expect_parameter_names(m, expected: list[str], *, what: str) -> dict:
    """The module's parameters by name; Wrong unless they are exactly `expected` (in any order)."""
    params = named_parameters(m)
    if sorted(params) != sorted(expected):
        raise checks.Wrong(
            f"{what}.named_parameters() gives {list(params)}, expected {expected}: "
            "assign nn.Parameter attributes (and submodules in an nn.ModuleList), so that nn.Module registers them"
        )
    return params


# ---------------------------------------------------------------- Linear: layout


def make_linear(mod, d_in, d_out, *, bias=True, device="cpu", dtype=torch.float32, seed=None):
    """The learner's Linear; with `seed`, its parameters set to seeded values (so they are seen to be used)."""
    what = f"Linear({d_in}, {d_out}{'' if bias else ', bias=False'})"
    m = rules.call(mod.Linear, d_in, d_out, bias=bias, what=what)
    if seed is not None:
        names = ["weight", "bias"] if bias else ["weight"]
        params = expect_parameter_names(m, names, what=what)
        values = {"weight": randn(d_out, d_in, seed=seed, device="cpu", scale=d_in**-0.5)}
        if bias:
            values["bias"] = randn(d_out, seed=seed + 1, device="cpu", scale=0.5)
        for name, value in values.items():
            checks.expect_tensor(params[name].detach(), shape=value.shape, dtype=torch.float32, device="cpu", what=f"{what}.{name}")
        rules.call(harness.assign_parameters, m, values)
    return m.to(device=device, dtype=dtype), what


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_linear_layout(mod, bias):
    """weight (out, in) and bias (out,) are trainable Parameters, the only state_dict entries;
    with bias=False there is no bias parameter and `bias` is None."""
    m, what = make_linear(mod, 5, 3, bias=bias)
    names = ["weight", "bias"] if bias else ["weight"]
    params = expect_parameter_names(m, names, what=what)
    shapes = {"weight": (3, 5), "bias": (3,)}
    for name, p in params.items():
        checks.expect_tensor(p.detach(), shape=shapes[name], dtype=torch.float32, device="cpu", what=f"{what}.{name}")
        if not p.requires_grad:
            raise checks.Wrong(f"{what}.{name} has requires_grad=False: it must be trainable")
    if not bias and m.bias is not None:
        raise checks.Wrong(f"{what}.bias is {checks.describe(m.bias)}, expected None (register_parameter('bias', None))")
    keys = list(m.state_dict())
    if sorted(keys) != sorted(names):
        raise checks.Wrong(f"{what}.state_dict() has keys {keys}, expected {names}")
    for attr, value in (("in_features", 5), ("out_features", 3)):
        got = getattr(m, attr, None)
        if got != value:
            raise checks.Wrong(f"{what}.{attr} is {got!r}, expected {value}")


# ---------------------------------------------------------------- Linear: initialisation

# The initialisation is random: it is checked against the distribution nn.Linear draws
# from, U(-b, b) with b = 1/sqrt(in_features), independently for every entry.
#   - Bounds, exactly: no |value| above b (float32 rounding allowed), and the largest |value|
#     within a factor (1 - DELTA) of b: for n iid draws P(max |w| < b (1 - DELTA)) =
#     (1 - DELTA)^n <= exp(-n DELTA) = ALPHA_MAX with DELTA = ln(1 / ALPHA_MAX) / n.
#   - Shape of the distribution: the Kolmogorov-Smirnov distance D_n = sup |F_n - F| between
#     the values' empirical CDF and U(-b, b)'s. The Dvoretzky-Kiefer-Wolfowitz inequality
#     (Massart's constant) gives P(D_n > eps) <= 2 exp(-2 n eps^2) for every n, with no
#     approximation: eps = sqrt(ln(2 / ALPHA_KS) / (2 n)).
# Each check case tests one tensor with both, so a correct layer fails a case with
# probability at most ALPHA_MAX + ALPHA_KS = 1.1e-7, whatever order it draws in, and the
# 4 cases of the two init checks together at most 4.4e-7 < 1e-6. The draws follow the
# check's fixed seed, so the verdict is the same on every run.
ALPHA_MAX = 1e-8
ALPHA_KS = 1e-7
INIT_CASES = {"in=256,out=2048": (256, 2048), "in=out=128": (128, 128)}


def expect_uniform(values: torch.Tensor, bound: float, *, what: str) -> None:
    v = values.detach().double().flatten()
    n = v.numel()
    top = v.abs().max().item()
    if top > bound * (1 + 1e-6):
        raise checks.Wrong(f"{what} has a value of magnitude {top:.5g}, above the bound 1/sqrt(in_features) = {bound:.5g}")
    delta = math.log(1 / ALPHA_MAX) / n
    if top < bound * (1 - delta):
        raise checks.Wrong(
            f"{what}: its {n} values reach only {top:.5g}; uniform draws in [-{bound:.5g}, {bound:.5g}] come within "
            f"{delta:.2%} of the bound (probability of less: {ALPHA_MAX:g})"
        )
    u = ((v.sort().values + bound) / (2 * bound)).clamp(0, 1)  # the U(0, 1) CDF of each sorted value
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - u, u - (i - 1) / n).max().item()
    eps = math.sqrt(math.log(2 / ALPHA_KS) / (2 * n))
    if ks > eps:
        raise checks.Wrong(
            f"{what} does not look uniform on [-{bound:.5g}, {bound:.5g}]: Kolmogorov-Smirnov distance {ks:.4f} > {eps:.4f} "
            f"(a uniform sample of {n} values exceeds it with probability below {ALPHA_KS:g}); "
            f"mean {v.mean().item():.3g}, std {v.std().item():.4g} (uniform: 0, {bound / math.sqrt(3):.4g})"
        )


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_linear_weight_init_is_uniform(mod, case):
    d_in, d_out = INIT_CASES[case]
    m, what = make_linear(mod, d_in, d_out)
    params = expect_parameter_names(m, ["weight", "bias"], what=what)
    expect_uniform(params["weight"], 1 / math.sqrt(d_in), what=f"{what}.weight")


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_linear_bias_init_is_uniform(mod, case):
    d_in, d_out = INIT_CASES[case]
    m, what = make_linear(mod, d_in, d_out)
    params = expect_parameter_names(m, ["weight", "bias"], what=what)
    expect_uniform(params["bias"], 1 / math.sqrt(d_in), what=f"{what}.bias")


def test_linear_init_follows_torch_manual_seed(mod):
    """After torch.manual_seed(s), building the layer again gives the same values."""
    built = []
    for _ in range(2):
        checks.seed_executor(mod, 1234)
        m, what = make_linear(mod, 16, 8)
        built.append({k: v.detach() for k, v in m.state_dict().items()})
    if sorted(built[0]) != ["bias", "weight"] or any(not torch.equal(built[0][k], built[1][k]) for k in built[0]):
        raise checks.Wrong(
            f"{what} built twice after torch.manual_seed(1234) gave different values: draw with torch's global "
            "generator (tensor.uniform_), not numpy, random or a generator of your own"
        )


def test_two_linears_get_independent_draws(mod):
    """Two layers built one after the other start from different values (no seed reset inside)."""
    a, what = make_linear(mod, 16, 8)
    b, _ = make_linear(mod, 16, 8)
    wa, wb = named_parameters(a).get("weight"), named_parameters(b).get("weight")
    if wa is None or wb is None:
        raise checks.Wrong(f"{what} has no weight parameter")
    if torch.equal(wa.detach(), wb.detach()):
        raise checks.Wrong(f"two {what} layers built one after the other have the same weight: is the generator reseeded in __init__?")


# ---------------------------------------------------------------- Linear: values


LINEAR_CASES = {
    "2d": (True, (7, 12)),
    "3d": (True, (2, 5, 12)),
    "4d": (True, (2, 3, 4, 12)),
    "vector": (True, (12,)),
    "no_bias": (False, (2, 5, 12)),
    "non_contiguous": (True, "transposed"),
}


def linear_input(shape, device, dtype=torch.float32, seed=3):
    if shape == "transposed":
        return make_x(2, 12, 5, seed=seed, device=device, dtype=dtype).transpose(1, 2)  # (2, 5, 12), non-contiguous
    return make_x(*shape, seed=seed, device=device, dtype=dtype)


def linear_weights(m) -> tuple:
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    return sd["weight"], sd.get("bias")


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_matches_torch(mod, device, case):
    bias, shape = LINEAR_CASES[case]
    m, what = make_linear(mod, 12, 6, bias=bias, device=device, seed=1)
    x = linear_input(shape, device)
    call = describe_call(what, x)
    got = rules.call(m, x, what=call)
    w, b = linear_weights(m)
    expect_close(got, F.linear(golden(x), golden(w), golden(b)), what=call, dtype=torch.float32, device=device, baseline=F.linear(x, w, b))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gradients(mod, device, bias):
    m, what = make_linear(mod, 12, 6, bias=bias, device=device, seed=1)
    w, b = linear_weights(m)
    x = make_x(2, 5, 12, seed=4, device=device).requires_grad_()
    upstream = randn(2, 5, 6, seed=5, device=device)
    call = describe_call(what, x)
    out = rules.call(m, x, what=call, backward=upstream)
    checks.expect_tensor(out, shape=(2, 5, 6), dtype=torch.float32, device=device, what=call)
    if not out.requires_grad:
        raise checks.Wrong(f"{call} returned a tensor with no autograd history")
    leaves = {"x": golden(x).requires_grad_(), "weight": golden(w).requires_grad_()}
    if bias:
        leaves["bias"] = golden(b).requires_grad_()
    F.linear(leaves["x"], leaves["weight"], leaves.get("bias")).backward(golden(upstream))
    base = {"x": x.detach().clone().requires_grad_(), "weight": w.clone().requires_grad_()}
    if bias:
        base["bias"] = b.clone().requires_grad_()
    F.linear(base["x"], base["weight"], base.get("bias")).backward(upstream)
    params = named_parameters(m)
    got = {"x": x.grad} | {name: params[name].grad if name in params else None for name in leaves if name != "x"}
    for name, g in got.items():
        if g is None:
            raise checks.Wrong(f"after backward through {call}, {name}.grad is None: no gradient reaches it")
        expect_close(g, leaves[name].grad, what=f"{name}.grad after {call}", dtype=torch.float32, device=device, baseline=base[name].grad)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_linear_low_precision(mod, device, dtype):
    """Linear(...).to(dtype) computes in that dtype, as accurately as F.linear there."""
    checks.need_dtype(dtype, device)
    m, what = make_linear(mod, 12, 6, device=device, dtype=dtype, seed=1)
    x = make_x(2, 5, 12, seed=6, device=device, dtype=dtype)
    call = describe_call(f"{what}.to({str(dtype).removeprefix('torch.')})", x)
    got = rules.call(m, x, what=call)
    w, b = linear_weights(m)
    expect_close(got, F.linear(golden(x), golden(w), golden(b)), what=call, dtype=dtype, device=device, baseline=F.linear(x, w, b))


def test_linear_loads_nn_linear_state_dict(mod, device):
    """nn.Linear's state_dict loads into Linear (same keys and shapes) and gives nn.Linear's
    outputs; Linear's state_dict loads back into an nn.Linear."""
    ref = nn.Linear(12, 6)
    with torch.no_grad():
        ref.weight.copy_(randn(6, 12, seed=7, device="cpu", scale=0.3))
        ref.bias.copy_(randn(6, seed=8, device="cpu"))
    m, what = make_linear(mod, 12, 6)
    load_state_dict(m, ref.state_dict(), what=f"{what}.load_state_dict(nn.Linear(12, 6).state_dict())")
    m = m.to(device)
    x = make_x(3, 12, seed=9, device=device)
    call = describe_call(f"{what} after loading nn.Linear's state_dict", x)
    got = rules.call(m, x, what=call)
    expect_close(got, F.linear(golden(x), golden(ref.weight), golden(ref.bias)), what=call, dtype=torch.float32, device=device,
                 baseline=ref.to(device)(x).detach())  # fmt: skip
    back = nn.Linear(12, 6)
    try:
        back.load_state_dict({k: v.detach().cpu() for k, v in m.state_dict().items()})
    except RuntimeError as exc:
        raise checks.Wrong(f"{what}.state_dict() does not load into nn.Linear(12, 6): {str(exc).splitlines()[0]}") from None


def linear_ops(mod, shape, device):
    m, _ = make_linear(mod, 8, 4, device=device, seed=1)
    return rules.count_ops(m, make_x(*shape, seed=1, device=device))


def test_linear_no_loop_over_rows(mod, device):
    """The same aten ops for x (2, 3, 8) as for (5, 7, 8): one matmul, not one per row."""
    checks.expect_same_op_count(
        partial(linear_ops, mod, (2, 3, 8), device), partial(linear_ops, mod, (5, 7, 8), device),
        what="Linear(8, 4)", small_desc="x (2, 3, 8)", large_desc="x (5, 7, 8)",
    )  # fmt: skip


# ---------------------------------------------------------------- MLP


def mlp_names(sizes, activation_params=()) -> list[str]:
    names = [f"layers.{i}.{p}" for i in range(len(sizes) - 1) for p in ("weight", "bias")]
    return names + [f"activations.{i}.{p}" for i in range(len(sizes) - 2) for p in activation_params]


ACTIVATIONS = {"ReLU": (nn.ReLU, ()), "Tanh": (nn.Tanh, ()), "GELU": (nn.GELU, ()), "PReLU": (nn.PReLU, ("weight",))}


def make_mlp(mod, sizes, act="ReLU", *, device="cpu", seed=None):
    """The learner's MLP; with `seed`, every parameter set to seeded values."""
    cls, act_params = ACTIVATIONS[act]
    what = f"MLP({list(sizes)}, activation=nn.{act})"
    m = rules.call(mod.MLP, list(sizes), activation=cls, what=what)
    if seed is not None:
        params = named_parameters(m)
        expected = mlp_names(sizes, act_params)
        if sorted(params) != sorted(expected):
            raise checks.Wrong(f"{what}.named_parameters() gives {list(params)}, expected {expected}")
        values = {}
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for name, shape in ((f"layers.{i}.weight", (d_out, d_in)), (f"layers.{i}.bias", (d_out,))):
                checks.expect_tensor(params[name].detach(), shape=shape, dtype=torch.float32, device="cpu", what=f"{what}.{name}")
        for i, name in enumerate(expected):
            shape = params[name].shape
            scale = 0.25 if name.startswith("activations") else (shape[-1] ** -0.5 if len(shape) == 2 else 0.5)
            values[name] = randn(*shape, seed=seed + i, device="cpu", scale=scale)
        rules.call(harness.assign_parameters, m, values)
    return m.to(device), what


def mlp_reference(sd: dict, sizes, act: str, x):
    """The MLP's output from its state_dict, in x's dtype: F.linear, the activation between layers."""
    n = len(sizes) - 1
    def conv(t):  # a float64 leaf that requires grad stays itself (so its .grad fills in)
        return t.to(device=x.device, dtype=x.dtype)

    for i in range(n):
        x = F.linear(x, conv(sd[f"layers.{i}.weight"]), conv(sd[f"layers.{i}.bias"]))
        if i < n - 1:
            x = F.prelu(x, conv(sd[f"activations.{i}.weight"])) if act == "PReLU" else ACTIVATIONS[act][0]()(x)
    return x


def test_mlp_layout(mod):
    """layers: an nn.ModuleList of this kata's Linear; activations: one per hidden layer."""
    sizes = [6, 8, 5, 3]
    m, what = make_mlp(mod, sizes)
    layers = getattr(m, "layers", None)
    if not checks.is_instance(layers, nn.ModuleList):
        raise checks.Wrong(f"{what}.layers is {checks.type_name(layers)}, expected an nn.ModuleList (a Python list hides its modules)")
    if len(layers) != 3:
        raise checks.Wrong(f"{what}.layers has {len(layers)} modules, expected 3 Linear layers")
    for i, layer in enumerate(layers):
        if checks.is_instance(layer, nn.Linear) or checks.type_name(layer) != "Linear":
            raise checks.Wrong(f"{what}.layers[{i}] is {checks.type_name(layer)}: expected this kata's Linear, not torch.nn.Linear")
    acts = getattr(m, "activations", None)
    if not checks.is_instance(acts, nn.ModuleList) or len(acts) != 2:
        got = f"{checks.type_name(acts)} of {len(acts)}" if checks.is_instance(acts, nn.ModuleList) else checks.type_name(acts)
        raise checks.Wrong(f"{what}.activations is {got}, expected an nn.ModuleList of 2 nn.ReLU (one per hidden layer, none after the last)")
    params = expect_parameter_names(m, mlp_names(sizes), what=what)
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        checks.expect_tensor(params[f"layers.{i}.weight"].detach(), shape=(d_out, d_in), dtype=torch.float32, device="cpu",
                             what=f"{what}.layers.{i}.weight")  # fmt: skip
    keys = list(m.state_dict())
    if sorted(keys) != sorted(mlp_names(sizes)):
        raise checks.Wrong(f"{what}.state_dict() has keys {keys}, expected {mlp_names(sizes)}")


@pytest.mark.parametrize("sizes", [[4], []], ids=["one_size", "no_sizes"])
def test_mlp_rejects_fewer_than_two_sizes(mod, sizes):
    rules.expect_raises(ValueError, mod.MLP, sizes, what=f"MLP({sizes})")


# name: (sizes, activation, x shape)
MLP_CASES = {
    "relu_2d": ([6, 8, 5, 3], "ReLU", (7, 6)),
    "tanh_3d": ([6, 8, 3], "Tanh", (2, 4, 6)),
    "gelu_deep": ([4, 8, 8, 8, 2], "GELU", (5, 4)),
    "one_layer": ([6, 3], "ReLU", (7, 6)),
}


@pytest.mark.parametrize("case", list(MLP_CASES))
def test_mlp_matches_torch(mod, device, case):
    sizes, act, shape = MLP_CASES[case]
    m, what = make_mlp(mod, sizes, act, device=device, seed=10)
    x = make_x(*shape, seed=11, device=device)
    call = describe_call(what, x)
    got = rules.call(m, x, what=call)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    expect_close(got, mlp_reference(sd, sizes, act, golden(x)), what=call, dtype=torch.float32, device=device,
                 baseline=mlp_reference(sd, sizes, act, x))  # fmt: skip


def test_mlp_makes_one_activation_per_hidden_layer(mod, device):
    """activation=nn.PReLU: each hidden layer has its own PReLU (its own weight), applied in order."""
    sizes = [4, 6, 6, 2]
    m, what = make_mlp(mod, sizes, "PReLU")
    names = sorted(named_parameters(m))
    want = sorted(mlp_names(sizes, ("weight",)))
    if names != want:
        raise checks.Wrong(f"{what}.named_parameters() gives {names}, expected {want}: call activation() once per hidden layer "
                           "(one shared instance shares its parameters)")  # fmt: skip
    m, what = make_mlp(mod, sizes, "PReLU", device=device, seed=20)
    x = make_x(5, 4, seed=21, device=device)
    call = describe_call(what, x)
    got = rules.call(m, x, what=call)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    expect_close(got, mlp_reference(sd, sizes, "PReLU", golden(x)), what=call, dtype=torch.float32, device=device,
                 baseline=mlp_reference(sd, sizes, "PReLU", x))  # fmt: skip


def test_mlp_gradients_reach_every_layer(mod, device):
    sizes, act = [6, 8, 5, 3], "Tanh"
    m, what = make_mlp(mod, sizes, act, device=device, seed=30)
    x = make_x(4, 6, seed=31, device=device).requires_grad_()
    upstream = randn(4, 3, seed=32, device=device)
    call = describe_call(what, x)
    out = rules.call(m, x, what=call, backward=upstream)
    checks.expect_tensor(out, shape=(4, 3), dtype=torch.float32, device=device, what=call)
    params = named_parameters(m)
    if sorted(params) != sorted(mlp_names(sizes)):
        raise checks.Wrong(f"{what}.parameters() sees {sorted(params)}, expected {mlp_names(sizes)}: an optimiser could not train the rest")
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    gold = {k: golden(v).requires_grad_() for k, v in sd.items()}
    gx = golden(x).requires_grad_()
    mlp_reference(gold, sizes, act, gx).backward(golden(upstream))
    base = {k: v.clone().requires_grad_() for k, v in sd.items()}
    bx = x.detach().clone().requires_grad_()
    mlp_reference(base, sizes, act, bx).backward(upstream)
    for name, p in params.items():
        if p.grad is None:
            raise checks.Wrong(f"after backward through {call}, {name}.grad is None")
        expect_close(p.grad, gold[name].grad, what=f"{name}.grad after {call}", dtype=torch.float32, device=device, baseline=base[name].grad)
    expect_close(x.grad, gx.grad, what=f"x.grad after {call}", dtype=torch.float32, device=device, baseline=bx.grad)


def test_mlp_state_dict_round_trip(mod, device):
    """A fresh MLP that loads another's state_dict computes the same outputs."""
    sizes = [6, 8, 5, 3]
    a, what = make_mlp(mod, sizes, device=device, seed=40)
    b, _ = make_mlp(mod, sizes, device=device)
    saved = {k: v.detach() for k, v in a.state_dict().items()}
    load_state_dict(b, saved, what=f"a fresh {what}.load_state_dict(trained.state_dict())")
    x = make_x(7, 6, seed=41, device=device)
    want = rules.call(a, x, what=describe_call(f"the trained {what}", x))
    got = rules.call(b, x, what=describe_call(f"a fresh {what} after loading its state_dict", x))
    expect_close(got, golden(want), what=f"a fresh {what}'s output after load_state_dict(trained.state_dict()), against the trained one's",
                 dtype=torch.float32, device=device)  # fmt: skip


def test_mlp_to_casts_every_layer(mod):
    """.to(torch.float64) reaches every layer's parameters (through the ModuleList)."""
    sizes = [6, 8, 5, 3]
    m, what = make_mlp(mod, sizes, seed=43)
    m = rules.call(m.to, torch.float64, what=f"{what}.to(torch.float64)")
    for i in range(len(sizes) - 1):
        w = m.layers[i].weight
        if w.dtype != torch.float64:
            raise checks.Wrong(f"after {what}.to(torch.float64), layers[{i}].weight is {w.dtype}: .to() never saw that layer")
    x = make_x(3, 6, seed=42, device="cpu", dtype=torch.float64)
    got = rules.call(m, x, what=describe_call(f"{what}.to(torch.float64)", x))
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    expect_close(got, mlp_reference(sd, sizes, "ReLU", x), what=describe_call(f"{what}.to(torch.float64)", x), dtype=torch.float64, device="cpu")


# ---------------------------------------------------------------- RunningMean

D = 6


def make_running_mean(mod, dim=D):
    what = f"RunningMean({dim})"
    return rules.call(mod.RunningMean, dim, what=what), what


def buffers_of(m) -> tuple:
    """The executor's own state tensors of the module (its buffers, and anything else in its
    state_dict, which a training call may update in place): the tensors the call may modify."""
    return tuple(checks.in_executor(t) for t in m.state_dict(keep_vars=True).values())


def stats_of(m, what):
    mean, count = getattr(m, "mean", None), getattr(m, "count", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(count, torch.Tensor):
        raise checks.Wrong(f"{what} has mean {checks.describe(mean)} and count {checks.describe(count)}; expected two tensors")
    return mean, count


def train_step(m, x, what):
    return rules.call(m, x, what=describe_call(f"{what} in training", x), may_modify=buffers_of(m))


STEPS = [(4, D), (2, 3, D), (1, D), (5, D)]  # shapes: rows 4, 6, 1, 5


def step_input(i, shape, device="cpu", dtype=torch.float32):
    return make_x(*shape, seed=50 + i, device=device, dtype=dtype, scale=1.0 + i, offset=3.0 - 2 * i)


def test_running_mean_layout(mod):
    """No parameters; two persistent buffers, mean (D,) float32 zeros and count 0-d int64 0."""
    m, what = make_running_mean(mod)
    params = list(named_parameters(m))
    if params:
        raise checks.Wrong(f"{what} has parameters {params}: running statistics are buffers (register_buffer), never trained")
    buffers = dict(m.named_buffers())
    if sorted(buffers) != ["count", "mean"]:
        raise checks.Wrong(f"{what}.named_buffers() gives {sorted(buffers)}, expected ['count', 'mean'] (register_buffer)")
    checks.expect_tensor(buffers["mean"], shape=(D,), dtype=torch.float32, device="cpu", what=f"{what}.mean")
    checks.expect_tensor(buffers["count"], shape=(), dtype=torch.int64, device="cpu", what=f"{what}.count")
    if buffers["mean"].any() or buffers["count"].item() != 0:
        raise checks.Wrong(f"{what} starts with mean {buffers['mean'].tolist()} and count {buffers['count'].item()}, expected zeros and 0")
    keys = sorted(m.state_dict())
    if keys != ["count", "mean"]:
        raise checks.Wrong(f"{what}.state_dict() has keys {keys}, expected ['count', 'mean']: register both buffers as persistent")


# Training calls per case: shapes (rows = numel // D). Equal batches, unequal ones, and
# 3-d inputs whose rows span two leading dims.
TRACK_CASES = {
    "equal_batches": [(4, D), (4, D), (4, D)],
    "unequal_batches": [(4, D), (1, D), (5, D)],
    "3d_batches": [(2, 3, D), (3, 2, D)],
}


def tracked(mod, case, device):
    """Yield (call number, label, x, output, rows seen so far in float64, count, mean) per training call."""
    m, what = make_running_mean(mod)
    m = m.to(device)
    seen = []
    for i, shape in enumerate(TRACK_CASES[case]):
        x = step_input(i, shape, device)
        out = train_step(m, x, what)
        seen.append(golden(x).reshape(-1, D))
        mean, count = stats_of(m, what)
        label = f"{what} after training calls on {', '.join(str(tuple(s)) for s in TRACK_CASES[case][: i + 1])}"
        yield i + 1, label, x, out, torch.cat(seen), count, mean


@pytest.mark.parametrize("case", list(TRACK_CASES))
def test_running_mean_counts_rows(mod, device, case):
    """After each training call, count is the number of rows seen (every leading index is a row)."""
    for _, label, _, _, rows, count, _ in tracked(mod, case, device):
        if count.numel() != 1 or int(count) != rows.shape[0]:
            raise checks.Wrong(f"{label}: count is {count.tolist()}, expected {rows.shape[0]} rows")


@pytest.mark.parametrize("case", list(TRACK_CASES))
def test_running_mean_tracks_the_mean(mod, device, case):
    """After each training call, mean is the mean of every row seen (float64 reference), and
    the call returned x minus that updated mean."""
    for i, label, x, out, rows, _, mean in tracked(mod, case, device):
        expect_close(mean, rows.mean(0), what=f"{label}: mean", dtype=torch.float32, device=device)
        expect_close(out, golden(x) - rows.mean(0), what=f"{label}: the output of call {i} (x minus the updated mean)",
                     dtype=torch.float32, device=device)  # fmt: skip


def test_running_mean_eval_changes_nothing(mod, device):
    m, what = make_running_mean(mod)
    m = m.to(device)
    for i, shape in enumerate(STEPS[:2]):
        train_step(m, step_input(i, shape, device), what)
    rules.call(m.eval, what=f"{what}.eval()")
    mean, _ = stats_of(m, what)
    x = make_x(3, D, seed=60, device=device, offset=-5.0)
    call = describe_call(f"{what} in eval", x)
    out = rules.call(m, x, what=call)  # the rules report any buffer changed
    expect_close(out, golden(x) - golden(mean), what=call, dtype=torch.float32, device=device)


def test_running_mean_buffers_stay_out_of_autograd(mod, device):
    """A training call on an x that requires grad: the buffers do not require grad, and
    the gradient of x is the upstream gradient (x - mean, with mean a constant)."""
    m, what = make_running_mean(mod)
    m = m.to(device)
    x = step_input(0, (4, D), device).requires_grad_()
    upstream = randn(4, D, seed=61, device=device)
    call = describe_call(f"{what} in training", x)
    rules.call(m, x, what=call, backward=upstream, may_modify=buffers_of(m))
    for name, buf in m.named_buffers():
        if buf.requires_grad:
            raise checks.Wrong(f"after {call}, {what}.{name} requires grad: update the buffers under torch.no_grad(), "
                               "or they join (and keep alive) every batch's autograd graph")  # fmt: skip
    if x.grad is None:
        raise checks.Wrong(f"after backward through {call}, x.grad is None")
    expect_close(x.grad, golden(upstream), what=f"x.grad after {call}", dtype=torch.float32, device=device)


def test_running_mean_to_float64(mod):
    """.to(torch.float64) casts mean to float64 and leaves count int64; training goes on in float64."""
    m, what = make_running_mean(mod)
    train_step(m, step_input(0, (4, D)), what)
    m = rules.call(m.to, torch.float64, what=f"{what}.to(torch.float64)")
    mean, count = stats_of(m, what)
    if mean.dtype != torch.float64 or count.dtype != torch.int64:
        raise checks.Wrong(f"after {what}.to(torch.float64), mean is {mean.dtype} and count {count.dtype}; expected float64 and int64")
    x = step_input(1, (2, 3, D), dtype=torch.float64)
    out = train_step(m, x, what)
    rows = torch.cat([golden(step_input(0, (4, D))), golden(x).reshape(-1, D)])
    mean, count = stats_of(m, what)
    expect_close(mean, rows.mean(0), what=f"{what}.mean after a float32 call, .to(torch.float64) and a float64 call", dtype=torch.float64, device="cpu")
    expect_close(out, golden(x) - rows.mean(0), what=f"{what}'s float64 output", dtype=torch.float64, device="cpu")


def test_running_mean_moves_to_meta(mod):
    """.to('meta') moves both buffers (a plain tensor attribute would stay behind)."""
    m, what = make_running_mean(mod)
    m = rules.call(m.to, "meta", what=f"{what}.to('meta')")
    mean, count = stats_of(m, what)
    if mean.device.type != "meta" or count.device.type != "meta":
        raise checks.Wrong(f"after {what}.to('meta'), mean is on {mean.device} and count on {count.device}: register them as buffers")


def test_running_mean_resumes_from_state_dict(mod, device):
    """A fresh RunningMean that loads a trained one's state_dict continues exactly as it:
    the same buffers, and the same mean after one more training call on both."""
    a, what = make_running_mean(mod)
    a = a.to(device)
    for i, shape in enumerate(STEPS[:3]):
        train_step(a, step_input(i, shape, device), what)
    saved = {k: v.detach() for k, v in a.state_dict().items()}
    b, _ = make_running_mean(mod)
    b = b.to(device)
    load_state_dict(b, saved, what=f"a fresh {what}.load_state_dict(trained.state_dict())")
    x = step_input(3, STEPS[3], device)
    out_a = train_step(a, x, what)
    out_b = train_step(b, x, what)
    (mean_a, count_a), (mean_b, count_b) = stats_of(a, what), stats_of(b, what)
    if int(count_b) != int(count_a):
        raise checks.Wrong(f"a fresh {what} that loaded a trained one's state_dict has count {int(count_b)} after one more call; "
                           f"the trained one has {int(count_a)}: is count in the state_dict?")  # fmt: skip
    expect_close(mean_b, golden(mean_a), what=f"the resumed {what}.mean after one more call, against the original's", dtype=torch.float32, device=device)
    expect_close(out_b, golden(out_a), what=f"the resumed {what}'s output, against the original's", dtype=torch.float32, device=device)


def running_mean_ops(mod, shape, device):
    m, what = make_running_mean(mod)
    m = m.to(device)
    return rules.count_ops(m, make_x(*shape, seed=1, device=device), may_modify=buffers_of(m))


def test_running_mean_no_loop_over_rows(mod, device):
    checks.expect_same_op_count(
        partial(running_mean_ops, mod, (3, D), device), partial(running_mean_ops, mod, (4, 5, D), device),
        what=f"RunningMean({D}) in training", small_desc=f"x (3, {D})", large_desc=f"x (4, 5, {D})",
    )  # fmt: skip


# ---------------------------------------------------------------- count_parameters


class Mixed(nn.Module):
    """Two Linears, the first frozen, with a BatchNorm (2 parameters, 3 buffers) between."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(4, 8)  # 40, frozen
        self.norm = nn.BatchNorm1d(8)  # 16 trainable; running_mean, running_var, num_batches_tracked
        self.head = nn.Sequential(nn.Linear(8, 3))  # 27, one level deeper
        self.frozen.requires_grad_(False)


class Tied(nn.Module):
    """An embedding and an output head sharing one (10, 4) weight, the head with its own bias."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.emb.weight
        self.register_buffer("positions", torch.zeros(7))


@pytest.mark.parametrize("trainable_only, expected", [(None, 43), (True, 43), (False, 83)], ids=["default", "trainable_only", "all"])
def test_count_parameters(mod, trainable_only, expected):
    (model,) = checks.place(mod, Mixed())
    kwargs = {} if trainable_only is None else {"trainable_only": trainable_only}
    what = describe_call("count_parameters", model, **kwargs)
    got = rules.call(mod.count_parameters, model, what=what, **kwargs)
    if isinstance(got, bool) or not isinstance(got, int):
        raise checks.Wrong(f"{what} returned {checks.describe(got)} ({type(got).__name__}), expected a Python int")
    if got != expected:
        raise checks.Wrong(
            f"{what} on Linear(4, 8) (frozen) -> BatchNorm1d(8) -> Sequential(Linear(8, 3)) is {got}, expected {expected} "
            "(frozen: 40, BatchNorm weight and bias: 16, head: 27; buffers are not parameters)"
        )


def test_count_parameters_counts_tied_weights_once(mod):
    (model,) = checks.place(mod, Tied())
    what = "count_parameters(an Embedding(10, 4) and a Linear(4, 10) sharing one weight)"
    got = rules.call(mod.count_parameters, model, what=what)
    if got != 50:
        raise checks.Wrong(f"{what} is {got}, expected 40 + 10 = 50: the shared weight counts once (parameters() yields it once)")


def test_count_parameters_of_your_mlp(mod):
    """Your MLP's parameters, all of them trainable: layers through the ModuleList, PReLU weights too."""
    m, what = make_mlp(mod, [6, 8, 5, 3], "PReLU")
    got = rules.call(mod.count_parameters, m, what=f"count_parameters({what})")
    expected = (6 * 8 + 8) + (8 * 5 + 5) + (5 * 3 + 3) + 2
    if got != expected:
        raise checks.Wrong(f"count_parameters({what}) is {got}, expected {expected} (56 + 45 + 18 + 2 PReLU weights)")
