"""Grader for the kv_cache kata: KVCache, attend_with_cache, generate.

Attention values are checked against F.scaled_dot_product_attention with an explicit
bottom-right causal mask, and logits against a float64 forward pass of the same
TinyDecoder weights written with torch's own ops (F.layer_norm, F.linear, F.gelu and
causal F.scaled_dot_product_attention); generated ids against greedy decoding on that
float64 forward. The cache must write into storage allocated once and return views of
it; generation with the cache must run the model once per new token, do work that grows
linearly with the number of new tokens, and be measurably faster than without it.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, expect_tensor, golden, randn

TOPIC = course.get("kv_cache")
rules = checks.Rules(TOPIC.forbidden)
B, H, D = 2, 3, 4  # cache tests: batch, heads, head dim


@pytest.fixture(scope="module")
def kv(impl):
    return impl.load("kv_cache")


@pytest.fixture(scope="module")
def reference_kv(reference):
    return reference.load("kv_cache")



# ---------------------------------------------------------------- torch's reference


def bottom_right_mask(t_q: int, t_k: int) -> torch.Tensor:
    """True = may attend; the t_q queries are the last t_q of the t_k positions."""
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q)


def torch_attention(q, k, v, *, math_only=False):
    """torch's causal attention of q (B, H, t_q, D) over k, v (B, H, t_k, D), bottom-right."""
    mask = bottom_right_mask(q.shape[-2], k.shape[-2]).to(q.device)
    if math_only:  # torch's unfused kernel: the error a plain implementation is bound to make
        return checks.unfused_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def torch_forward(model, ids, *, dtype=torch.float64):
    """TinyDecoder's forward with torch's own ops and the model's weights: in float64 on
    the CPU (the golden), or in the model's own dtype and device (torch's own error)."""
    if dtype == torch.float64:
        p = {n: golden(t) for n, t in model.state_dict().items()}
        ids = ids.cpu()
    else:
        p = {n: t.detach() for n, t in model.state_dict().items()}
    Bt, T = ids.shape
    C = p["tok_emb.weight"].shape[1]
    h = model.n_heads
    x = F.embedding(ids, p["tok_emb.weight"]) + p["pos_emb.weight"][:T]
    for i in range(len(model.blocks)):
        w = {n.removeprefix(f"blocks.{i}."): t for n, t in p.items() if n.startswith(f"blocks.{i}.")}
        a = F.layer_norm(x, (C,), w["norm1.weight"], w["norm1.bias"])
        q, k, v = F.linear(a, w["qkv.weight"], w["qkv.bias"]).view(Bt, T, 3, h, C // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # square: top-left = bottom-right
        x = x + F.linear(y.transpose(1, 2).reshape(Bt, T, C), w["proj.weight"], w["proj.bias"])
        a = F.layer_norm(x, (C,), w["norm2.weight"], w["norm2.bias"])
        x = x + F.linear(F.gelu(F.linear(a, w["mlp.0.weight"], w["mlp.0.bias"])), w["mlp.2.weight"], w["mlp.2.bias"])
    x = F.layer_norm(x, (C,), p["norm.weight"], p["norm.bias"])
    return F.linear(x, p["head.weight"])  # (B, T, V)


def golden_greedy(model, prompt, n):
    """Greedy decoding on the float64 forward: the ids (B, T0 + n) every correct generate returns."""
    ids = prompt.cpu()
    for _ in range(n):
        last = torch_forward(model, ids)[:, -1]  # (B, V)
        top2 = last.topk(2, dim=-1).values
        # Grader's own sanity: with a near-tie, float32 rounding could pick either token.
        if (top2[:, 0] - top2[:, 1]).min() < 1e-3:
            raise RuntimeError("grader bug: the seeded model has a near-tie in greedy decoding; change the seed")
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids


# ---------------------------------------------------------------- inputs


def kv_chunk(t: int, seed: int, device, dtype=torch.float32):
    """Keys and values (B, H, t, D) for t new positions."""
    return randn(B, H, t, D, seed=seed, device=device, dtype=dtype), randn(B, H, t, D, seed=seed + 500, device=device, dtype=dtype)


def new_cache(kv, max_seq_len: int, **kwargs):
    """The learner's KVCache(B, H, max_seq_len, D, **kwargs), built under the rules."""
    what = describe_call("KVCache", B, H, max_seq_len, D, **kwargs)
    return rules.call(kv.KVCache, B, H, max_seq_len, D, what=what, **kwargs)


def filled_cache(kv, stored: int, max_seq_len: int, device, dtype=torch.float32):
    """A learner's cache holding `stored` positions written in one update: (cache, those keys,
    those values, what the update returned or None)."""
    cache = new_cache(kv, max_seq_len, dtype=dtype, device=device)
    k, v = kv_chunk(stored, seed=40, device=device, dtype=dtype)
    returned = None
    if stored:
        returned = rules.call(cache.update, k, v, what=describe_call("KVCache.update", k, v))
    return cache, k, v, returned


def make_model(kv, device, *, vocab_size=64, d_model=32, n_heads=4, n_layers=2, max_seq_len=32, seed=0):
    """The learner's TinyDecoder with seeded weights, so every run grades the same numbers."""
    model = rules.call(kv.TinyDecoder, vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                       max_seq_len=max_seq_len, what="TinyDecoder(...)")  # fmt: skip
    seeded = {}
    for i, (name, p) in enumerate(sorted(model.named_parameters())):
        noise = randn(*p.shape, seed=seed + 100 + i, device="cpu")
        if "emb" in name:
            seeded[name] = noise
        elif p.dim() == 2:  # linear weights: unit-variance outputs; a wide head spreads the logits
            seeded[name] = noise * p.shape[1] ** -0.5 * (3.0 if name == "head.weight" else 1.0)
        elif "norm" in name and name.endswith("weight"):
            seeded[name] = 1 + 0.1 * noise
        else:
            seeded[name] = 0.1 * noise
    rules.call(harness.assign_parameters, model, seeded)
    return model.to(device)


def prompt_ids(batch, t0, vocab_size, device, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, t0), generator=g).to(device)


def call_generate(kv, model, prompt, n, use_cache):
    what = describe_call("generate", checks.type_name(model), prompt, n, use_cache=use_cache).replace("'", "")
    return rules.call(kv.generate, model, prompt, n, use_cache=use_cache, what=what), what


CACHED = pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])


# ---------------------------------------------------------------- KVCache


# Chunks of t = 3, 2 (the 2 non-contiguous), then t = 1 three times; and one position per
# update, as decoding writes them (where advancing length by 1 whatever t is happens to be
# right, and never advancing it is not).
UPDATE_SCHEDULES = {"chunks": [3, 2, 1, 1, 1], "one_at_a_time": [1, 1, 1, 1]}


@pytest.mark.parametrize("schedule", list(UPDATE_SCHEDULES))
def test_update_returns_all_stored_keys_and_values(kv, device, schedule):
    """Each update returns every position so far, in order."""
    cache = new_cache(kv, 10, device=device)
    written_k, written_v, done = [], [], []
    for step, t in enumerate(UPDATE_SCHEDULES[schedule]):
        k, v = kv_chunk(t, seed=step, device=device)
        if step == 1 and t > 1:  # as the model passes them: views out of a permuted qkv projection
            k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
        written_k.append(k)
        written_v.append(v)
        done.append(t)
        what = f"KVCache(2, 3, 10, 4).update with t = {', '.join(map(str, done))}"
        out = rules.call(cache.update, k, v, what=what)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise checks.Wrong(f"{what} returned {type(out).__name__}, expected a (keys, values) tuple")
        n = sum(done)
        if not isinstance(cache.length, int) or isinstance(cache.length, bool) or cache.length != n:
            raise checks.Wrong(f"after {what}, cache.length is {cache.length!r}; expected the int {n}")
        for name, got, want in [("keys", out[0], torch.cat(written_k, 2)), ("values", out[1], torch.cat(written_v, 2))]:
            expect_tensor(got, shape=(B, H, n, D), dtype=torch.float32, device=device, what=f"{what}: {name}")
            if not torch.equal(got, want):
                pos = (got != want).nonzero()[0].tolist()
                raise checks.Wrong(
                    f"{what}: the returned {name} differ from the {name} written at index {tuple(pos)} "
                    f"(position {pos[2]}): expected every stored position in order, keys from k_new, values from v_new"
                )


def test_update_returns_views_of_fixed_storage(kv, device):
    """Every update returns views of the same preallocated storage, large enough for max_seq_len."""
    max_len = 12
    cache = new_cache(kv, max_len, device=device)
    returned = []  # kept alive, so a copy can never reuse the memory of the one before
    for step, t in enumerate([4, 1, 1, 2, 1, 1]):
        k, v = kv_chunk(t, seed=step, device=device)
        returned.append(rules.call(cache.update, k, v, what=f"KVCache.update (update {step + 1})"))
    for name, i in [("keys", 0), ("values", 1)]:
        first, last = returned[0][i], returned[-1][i]
        what = f"KVCache(2, 3, {max_len}, 4).update, called 6 times"
        ptrs = {checks.storage_of(x[i])["storage"] for x in returned}
        if len(ptrs) != 1:
            raise checks.Wrong(
                f"{what} returned {name} in {len(ptrs)} different storages: each update made new tensors "
                "(torch.cat, clone, ...); write into storage allocated once in __init__ and return views of it"
            )
        needed = B * H * max_len * D * last.element_size()
        if checks.storage_of(last)["nbytes"] < needed:
            raise checks.Wrong(
                f"{what}: the {name} live in a storage of {checks.storage_of(last)['nbytes']} bytes; "
                f"room for max_seq_len={max_len} positions needs {needed}: allocate it all in __init__"
            )
        if checks.storage_of(last)["base"] is None or checks.storage_of(first)["base"] != checks.storage_of(last)["base"]:
            raise checks.Wrong(f"{what}: the returned {name} are not views of one tensor (._base differs or is None)")


@pytest.mark.parametrize("stored, t", [(6, 1), (3, 4)], ids=["t=1 after 6", "t=4 after 3"])
def test_update_allocates_nothing(kv, device, stored, t):
    """update() copies the new chunk into place: no tensor as large as the history is made."""
    cache, _, _, _ = filled_cache(kv, stored, 12, device)
    k, v = kv_chunk(t, seed=9, device=device)
    ops = rules.record_ops(cache.update, k, v)
    chunk = B * H * t * D
    big = [(op.name, made.shape) for op in ops for made in op.new_tensors() if torch.Size(made.shape).numel() > chunk]
    if big:
        op, shape = big[0]
        raise checks.Wrong(
            f"KVCache.update({checks.describe(k)}, {checks.describe(v)}) with {stored} positions stored made a new tensor with "
            f"{op} of shape {shape}, larger than the new chunk: copying the history each step is what a cache "
            "avoids; write into the preallocated storage (slice assignment) and return views"
        )


def test_update_is_vectorised(kv, device):
    """update() runs the same aten ops for 1 new position as for 5: no Python loop over positions."""

    def ops(t):
        cache, _, _, _ = filled_cache(kv, 2, 12, device)
        return rules.count_ops(cache.update, *kv_chunk(t, seed=16, device=device))

    checks.expect_same_op_count(partial(ops, 1), partial(ops, 5), what="KVCache.update", small_desc="t=1", large_desc="t=5")


def whole_storage(t: torch.Tensor) -> torch.Tensor:
    """Every byte, now, of the storage behind t where t was made (not only the part t
    shows), as a flat uint8 tensor. Bytes, not values: storage from torch.empty may hold
    NaNs, and NaN != NaN."""
    return rules.call(harness.storage_bytes, checks.in_executor(t))


@pytest.mark.parametrize("stored, t, max_len", [(6, 3, 8), (0, 5, 4)], ids=["3 more after 6 of 8", "5 into empty 4"])
def test_update_past_capacity_raises(kv, device, stored, t, max_len):
    """Writing past max_seq_len raises ValueError (not whatever torch raises on the write)."""
    cache, _, _, _ = filled_cache(kv, stored, max_len, device)
    k, v = kv_chunk(t, seed=11, device=device)
    rules.expect_raises(ValueError, cache.update, k, v, what=f"KVCache(2, 3, {max_len}, 4) holding {stored}: update with t={t}")


@pytest.mark.parametrize("stored, t, max_len", [(6, 3, 8), (0, 5, 4)], ids=["3 more after 6 of 8", "5 into empty 4"])
def test_refused_update_leaves_the_cache_unchanged(kv, device, stored, t, max_len):
    """After a refused write past max_seq_len (whatever it raised: the check above says which
    error it must be), length, storage and the room left are exactly as before."""
    cache, k0, v0, returned = filled_cache(kv, stored, max_len, device)
    # The storage behind the stored positions, every byte of it, before the refused write.
    saved = [(name, x, whole_storage(x)) for name, x in zip(("keys", "values"), returned or ())]
    k, v = kv_chunk(t, seed=11, device=device)
    what = f"KVCache(2, 3, {max_len}, 4) holding {stored}: update with t={t}"
    try:
        rules.call(cache.update, k, v, what=what)
    except (NotImplementedError, checks.RuleBroken):
        raise
    except Exception:  # noqa: BLE001 - refused, as it must be; the kind is another check's
        pass
    else:
        raise checks.Wrong(f"{what} did not raise: a write past max_seq_len must be refused")
    if cache.length != stored:
        raise checks.Wrong(f"after the refused {what}, cache.length is {cache.length!r}; expected {stored} (unchanged)")
    for name, x, before in saved:
        if not torch.equal(whole_storage(x), before):
            raise checks.Wrong(f"the refused {what} still wrote into the {name} storage: check the room before writing")
    # The room left is still usable.
    room = max_len - stored
    k2, v2 = kv_chunk(room, seed=12, device=device)
    keys, values = rules.call(cache.update, k2, v2, what=f"{what}, then with t={room}")
    for name, got, want in [("keys", keys, torch.cat([k0, k2], 2)), ("values", values, torch.cat([v0, v2], 2))]:
        expect_tensor(got, shape=(B, H, max_len, D), dtype=torch.float32, device=device, what=f"the {name} after filling the room left")
        if not torch.equal(got, want):
            raise checks.Wrong(f"after the refused {what}, filling the {room} positions left returned the wrong {name}")


def test_reset_empties_the_cache(kv, device):
    cache, _, _, _ = filled_cache(kv, 5, 6, device)
    rules.call(cache.reset, what="KVCache.reset()")
    if cache.length != 0:
        raise checks.Wrong(f"after KVCache.reset(), cache.length is {cache.length!r}; expected 0")
    k, v = kv_chunk(2, seed=13, device=device)
    keys, values = rules.call(cache.update, k, v, what="KVCache.update after reset()")
    for name, got, want in [("keys", keys, k), ("values", values, v)]:
        expect_tensor(got, shape=(B, H, 2, D), dtype=torch.float32, device=device, what=f"update after reset(): {name}")
        if not torch.equal(got, want):
            raise checks.Wrong(f"KVCache.update after reset() returned {name} other than the 2 positions just written")
    k, v = kv_chunk(4, seed=14, device=device)  # the whole capacity is available again
    rules.call(cache.update, k, v, what="KVCache(2, 3, 6, 4).update with t=4 after reset() and t=2")


@pytest.mark.parametrize("dtype, where", [(torch.bfloat16, "device"), (torch.float64, "device"), (torch.float32, "meta")], ids=["bfloat16", "float64", "meta"])
def test_cache_dtype_and_device(kv, device, dtype, where):
    """The storage has the dtype and device asked for ('meta' checks device= on a CPU-only machine)."""
    target = device if where == "device" else torch.device("meta")
    if where == "device":
        checks.need_dtype(dtype, device)
    what = f"KVCache(2, 3, 8, 4, dtype={dtype}, device={target.type!r}).update"
    cache = new_cache(kv, 8, dtype=dtype, device=target)
    k, v = kv_chunk(3, seed=15, device=target, dtype=dtype)
    if where == "device":
        keys, values = rules.call(cache.update, k, v, what=what)
    else:
        failure = None
        try:
            keys, values = rules.call(cache.update, k, v, what=what)
        except NotImplementedError as exc:
            if str(exc).startswith("kv_cache."):  # the stub
                raise
            failure = str(exc)  # torch's own: meta data copied into real storage
        if failure is not None:  # raised outside the except, so the verdict is not "not started"
            raise checks.Wrong(f"{what} failed: {failure} (is the storage on the device asked for?)")
    for name, got in [("keys", keys), ("values", values)]:
        expect_tensor(got, shape=(B, H, 3, D), dtype=dtype, device=target, what=f"{what}: {name}")


# ---------------------------------------------------------------- attend_with_cache


def check_attend(kv, device, stored, t, *, max_len=10, dtype=torch.float32, non_contiguous=False):
    """attend_with_cache on t new positions after `stored` ones (stored=None: no cache), against torch."""
    q = randn(B, H, t, D, seed=20, device=device, dtype=dtype)
    k, v = kv_chunk(t, seed=21, device=device, dtype=dtype)
    if non_contiguous:
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    if stored is None:
        cache, k_all, v_all = None, k, v
        what = describe_call("attend_with_cache", q, k, v)
    else:
        cache, k0, v0, _ = filled_cache(kv, stored, max_len, device, dtype)
        k_all, v_all = torch.cat([k0, k], 2), torch.cat([v0, v], 2)
        what = describe_call("attend_with_cache", q, k, v) + f" with a cache holding {stored} positions"
    got = rules.call(kv.attend_with_cache, q, k, v, cache, what=what)
    want = torch_attention(golden(q), golden(k_all), golden(v_all))
    if dtype == torch.float32:
        baseline = torch_attention(q, k_all, v_all)
    else:
        baseline = torch_attention(q, k_all, v_all, math_only=True)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)
    if cache is not None and cache.length != stored + t:
        raise checks.Wrong(f"after {what}, cache.length is {cache.length!r}; expected {stored + t}")


@pytest.mark.parametrize("t, non_contiguous", [(5, False), (5, True), (1, False)], ids=["t=5", "t=5 non-contiguous", "t=1"])
def test_attend_without_cache_is_causal_attention(kv, device, t, non_contiguous):
    check_attend(kv, device, None, t, non_contiguous=non_contiguous)


def test_cached_prefill_is_causal(kv, device):
    """Six new positions into an empty cache: each attends to itself and the positions before, never after."""
    check_attend(kv, device, 0, 6)


@pytest.mark.parametrize("stored, t", [(4, 3), (6, 1), (1, 5)], ids=["3 after 4", "1 after 6", "5 after 1"])
def test_new_queries_attend_bottom_right(kv, device, stored, t):
    """With keys stored, the t new queries are the last t positions: query i sees keys 0 .. stored + i."""
    check_attend(kv, device, stored, t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision(kv, device, dtype):
    """A low-precision cache: output in that dtype, error within a few times torch's own."""
    checks.need_dtype(dtype, device)
    check_attend(kv, device, 4, 3, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_output_keeps_the_dtype(kv, device, dtype):
    """attend_with_cache returns q's dtype: computing in float32 inside is fine, returning it is not."""
    checks.need_dtype(dtype, device)
    q = randn(B, H, 3, D, seed=20, device=device, dtype=dtype)
    k, v = kv_chunk(3, seed=21, device=device, dtype=dtype)
    cache, _, _, _ = filled_cache(kv, 4, 10, device, dtype)
    what = describe_call("attend_with_cache", q, k, v) + " with a cache holding 4 positions"
    got = rules.call(kv.attend_with_cache, q, k, v, cache, what=what)
    if not isinstance(got, torch.Tensor) or got.dtype != dtype:
        raise checks.Wrong(f"{what} returned {checks.describe(got)}; expected {dtype}, q's dtype")


# ---------------------------------------------------------------- the model with caches


def test_cached_step_logits_match_full_forward(kv, device):
    """Prefill of 5 prompt positions, then 8 one-token steps driven by the grader: each step's
    logits equal a full forward over the whole sequence (float64, no cache)."""
    model = make_model(kv, device).eval()
    prompt = prompt_ids(2, 5, 64, device)
    ids = golden_greedy(model, prompt, 8).to(device)
    with torch.no_grad():
        caches = model.new_caches(2)
        what = f"TinyDecoder on the prompt {tuple(prompt.shape)} with empty caches (prefill)"
        got = rules.call(model, prompt, caches, what=what)
        want = torch_forward(model, prompt)
        expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=torch_forward(model, prompt, dtype=torch.float32))
        for n in range(5, 13):
            what = f"TinyDecoder on token {n} (1 id) with caches holding {n} positions"
            got = rules.call(model, ids[:, n : n + 1], caches, what=what)
            want = torch_forward(model, ids[:, : n + 1])[:, -1:]
            baseline = torch_forward(model, ids[:, : n + 1], dtype=torch.float32)[:, -1:]
            expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


# ---------------------------------------------------------------- generate


@CACHED
def test_generate_matches_greedy_decoding(kv, device, use_cache):
    """The prompt followed by the 10 tokens greedy decoding picks on the float64 forward."""
    model = make_model(kv, device)
    prompt = prompt_ids(2, 5, 64, device)
    want = golden_greedy(model, prompt, 10)
    got, what = call_generate(kv, model, prompt, 10, use_cache)
    expect_tensor(got, shape=want.shape, dtype=torch.int64, device=device, what=what)
    got = got.cpu()
    if not torch.equal(got, want):
        b, pos = (got != want).nonzero()[0].tolist()
        part = "the prompt" if pos < 5 else f"new token {pos - 5}"
        raise checks.Wrong(
            f"{what} differs at batch {b}, position {pos} ({part}): got {got[b].tolist()}, expected {want[b].tolist()}"
        )


class CallRecorder:
    """A hook on the model, in the executor beside it, noting for each model call: ids
    shape, cache length (None without caches), training, grad mode."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("ids")
        caches = args[1] if len(args) > 1 else kwargs.get("caches")
        length = caches[0].length if caches else None
        self.calls.append((tuple(ids.shape), length, module.training, torch.is_grad_enabled()))

    def remove(self):
        self.handle.remove()


def record_calls(model):
    """(the calls recorded so far, a function that returns them and removes the hook)."""
    recorder = rules.call(CallRecorder, model)

    def done():
        calls = recorder.calls
        recorder.remove()
        return calls

    return done


@CACHED
def test_generate_calls_model_once_per_new_token(kv, device, use_cache):
    """Cached: one prefill on the whole prompt, then one id per call, n calls in all.
    Uncached: call i runs on the whole sequence so far, with no caches."""
    model = make_model(kv, device)
    prompt = prompt_ids(2, 5, 64, device)
    n = 6
    done = record_calls(model)
    try:
        _, what = call_generate(kv, model, prompt, n, use_cache)
    finally:
        calls = done()
    got = [(shape, length) for shape, length, _, _ in calls]
    if use_cache:
        want = [((2, 5), 0)] + [((2, 1), 5 + i) for i in range(n - 1)]
        how = "(ids shape, cache length) per call: the prompt into empty caches, then one id per call"
    else:
        want = [((2, 5 + i), None) for i in range(n)]
        how = "(ids shape, cache length; None = no caches) per call: the whole sequence so far, no caches"
    if got != want:
        raise checks.Wrong(f"{what} called the model {len(got)} times with\n  {got}\nexpected {how}\n  {want}")


def test_generate_prefills_the_prompt_in_one_call(kv, device):
    """Cached: the first model call takes the whole prompt (one prefill). Whether it has
    caches is test_generate_calls_model_once_per_new_token's concern."""
    model = make_model(kv, device)
    done = record_calls(model)
    try:
        _, what = call_generate(kv, model, prompt_ids(2, 5, 64, device), 3, True)
    finally:
        calls = done()
    first = calls[0][0] if calls else "never"
    if first != (2, 5):
        raise checks.Wrong(f"{what} first called the model on ids of shape {first}; expected the whole prompt, (2, 5), in one call")


def generate_calls(kv, device, use_cache):
    """The model calls of a generate on a model left in training mode: (calls, what)."""
    model = make_model(kv, device).train()
    done = record_calls(model)
    try:
        _, what = call_generate(kv, model, prompt_ids(2, 5, 64, device), 3, use_cache)
    finally:
        calls = done()
    if not calls:
        raise checks.Wrong(f"{what} never called the model")
    return calls, what


@CACHED
def test_generate_runs_in_eval_mode(kv, device, use_cache):
    calls, what = generate_calls(kv, device, use_cache)
    if any(training for _, _, training, _ in calls):
        raise checks.Wrong(f"{what} ran a model in training mode: call model.eval() first")


@CACHED
def test_generate_runs_without_grad(kv, device, use_cache):
    calls, what = generate_calls(kv, device, use_cache)
    if any(grad for _, _, _, grad in calls):
        raise checks.Wrong(f"{what} ran the model with autograd recording: run it under torch.no_grad()")


def test_cached_generation_does_linear_work(kv, device):
    """FLOPs of cached generation for 8 and 16 new tokens (prompt of 4): twice the tokens,
    about twice the work. Re-running the whole sequence each step costs about 3x."""
    model = make_model(kv, device)
    prompt = prompt_ids(2, 4, 64, device)
    flops = {n: rules.count_flops(kv.generate, model, prompt, n, use_cache=True) for n in (8, 16)}
    if flops[8] == 0:
        raise checks.Wrong("generate(use_cache=True) ran no matmul at all")
    growth = flops[16] / flops[8]
    if growth > 2.4:
        raise checks.Wrong(
            f"generate(TinyDecoder, int64 (2, 4), n, use_cache=True) did {flops[8]:,} FLOPs for n=8 and "
            f"{flops[16]:,} for n=16: x{growth:.2f} for twice the tokens (a cache gives about x1.7, "
            "re-running the whole sequence each step about x3)"
        )


# ---------------------------------------------------------------- speed

# A model and prompt where recomputation dominates: on a GPU a small model is launch-bound,
# so the cached and uncached steps would take the same time whatever the sequence length.
SPEED_SIZES = {
    "cpu": dict(batch=4, t0=48, n=16, model=dict(vocab_size=256, d_model=128, n_heads=4, n_layers=2, max_seq_len=64)),
    "gpu": dict(batch=8, t0=496, n=16, model=dict(vocab_size=1024, d_model=512, n_heads=8, n_layers=2, max_seq_len=512)),
}


def speed_setup(kv, device):
    size = SPEED_SIZES["cpu" if device.type == "cpu" else "gpu"]
    model = make_model(kv, device, **size["model"]).eval()
    prompt = prompt_ids(size["batch"], size["t0"], size["model"]["vocab_size"], device)
    return model, prompt, size["n"]


def test_cache_speedup(kv, device, record_property):
    """The learner's cached generation against their own uncached generation."""
    model, prompt, n = speed_setup(kv, device)
    limit = TOPIC.speedup[device.type]
    speedup = rules.speed_ratio(
        partial(kv.generate, model, prompt, n, use_cache=False),
        partial(kv.generate, model, prompt, n, use_cache=True),
        device=device, near=limit, at_least=True,
    )  # fmt: skip
    record_property("speedup", round(speedup, 3))
    if speedup < limit:
        raise checks.TooSlow(
            f"generate(TinyDecoder, int64 {tuple(prompt.shape)}, {n}) with use_cache=True is only {speedup:.2f}x "
            f"faster than with use_cache=False on {device.type} (at least {limit:g}x expected): is the cache used?"
        )


def test_speed(kv, reference_kv, device, record_property):
    """The learner's cached generation against the reference's, with the same weights."""
    model, prompt, n = speed_setup(kv, device)
    ref_model, _, _ = speed_setup(reference_kv, device)
    limit = TOPIC.speed[device.type]
    ratio = rules.speed_ratio(partial(kv.generate, model, prompt, n), partial(reference_kv.generate, ref_model, prompt, n), device=device, near=limit)
    record_property("speed_ratio", round(ratio, 3))
    checks.expect_fast_enough(ratio, limit, what=f"generate(TinyDecoder, int64 {tuple(prompt.shape)}, {n})", device=device)
