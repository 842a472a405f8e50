"""`kata similarity`: copydetect's winnowing finds the copies in a synthetic class (renamed
variables, reordered functions, the reference pasted with renames) above every honest pair,
leaves the stub's boilerplate out, and refuses bad input in one line."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI") != "true":  # under CI a missing extra is an error, not a skip
    pytest.importorskip("copydetect", reason="the instructor extra is not installed: pip install -e '.[instructor]' (make test does)")

from kata import similarity  # noqa: E402

# The module's compared class is built once: keep these tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("similarity")

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ROOT / "tests/variants/attention"
SOLUTION = (ROOT / "solutions/attention/attention.py").read_text()
STUB = (ROOT / "exercises/attention/attention.py").read_text()

# Hand-written honest students: the same three things, written their own way.
BMM_STUDENT = '''
import math
import torch
from torch import nn


def causal_mask(t_q, t_k=None, *, device=None):
    n_keys = t_q if t_k is None else t_k
    if n_keys < t_q:
        raise ValueError("t_k must be at least t_q")
    rows = torch.arange(t_q, device=device).unsqueeze(1) + (n_keys - t_q)
    return torch.arange(n_keys, device=device).unsqueeze(0) <= rows


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None):
    lead = q.shape[:-2]
    qq = q.reshape(-1, q.shape[-2], q.shape[-1])
    kk = k.expand(*lead, *k.shape[-2:]).reshape(-1, k.shape[-2], k.shape[-1])
    vv = v.expand(*lead, *v.shape[-2:]).reshape(-1, v.shape[-2], v.shape[-1])
    factor = scale if scale is not None else 1 / math.sqrt(q.size(-1))
    logits = torch.bmm(qq, kk.transpose(1, 2)).mul(factor).reshape(*lead, q.shape[-2], k.shape[-2])
    if is_causal:
        logits = torch.where(causal_mask(q.shape[-2], k.shape[-2], device=q.device), logits, float("-inf"))
    if mask is not None:
        if mask.dtype is torch.bool:
            logits = torch.where(mask, logits, torch.tensor(float("-inf"), dtype=logits.dtype))
        else:
            logits = logits + mask
    p = torch.softmax(logits.float(), dim=-1).to(q.dtype)
    return torch.matmul(p, v)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads, *, bias=True):
        super().__init__()
        assert d_model % n_heads == 0
        self.h = n_heads
        self.d = d_model // n_heads
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(d_model, d_model, bias=bias))

    def forward(self, x, context=None, *, mask=None, is_causal=False):
        src = x if context is None else context
        b, n, _ = x.shape
        m = src.shape[1]
        q = self.q_proj(x).view(b, n, self.h, self.d).permute(0, 2, 1, 3)
        k = self.k_proj(src).view(b, m, self.h, self.d).permute(0, 2, 1, 3)
        v = self.v_proj(src).view(b, m, self.h, self.d).permute(0, 2, 1, 3)
        o = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
        return self.out_proj(o.permute(0, 2, 1, 3).reshape(b, n, self.h * self.d))
'''

LOOPY_STUDENT = '''
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


def causal_mask(t_q, t_k=None, *, device=None):
    if t_k is None:
        t_k = t_q
    if t_q > t_k:
        raise ValueError(f"need t_q <= t_k ({t_q} > {t_k})")
    full = torch.full((t_q, t_k), True, device=device)
    blocked = torch.triu(full, 1 + t_k - t_q)
    return full & ~blocked


def _neg_inf_where_blocked(allowed, like):
    bias = torch.zeros_like(like)
    return bias.masked_fill(allowed.logical_not(), -float("inf"))


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None):
    d = q.shape[-1]
    s = scale or 1.0 / d ** 0.5
    att = torch.einsum("...id,...jd->...ij", q, k) * s
    if mask is not None:
        att = att + (_neg_inf_where_blocked(mask, att) if mask.dtype == torch.bool else mask.to(att.dtype))
    if is_causal:
        att = att + _neg_inf_where_blocked(causal_mask(q.shape[-2], k.shape[-2], device=q.device), att)
    att = att - att.amax(-1, keepdim=True)
    e = att.exp()
    return torch.einsum("...ij,...jd->...id", e / e.sum(-1, keepdim=True), v)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads, *, bias=True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError("heads must divide d_model")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias)
        self.k_proj = nn.Linear(d_model, d_model, bias)
        self.v_proj = nn.Linear(d_model, d_model, bias)
        self.out_proj = nn.Linear(d_model, d_model, bias)

    def _heads(self, t):
        return t.reshape(t.shape[0], t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, *, mask=None, is_causal=False):
        kv = context if context is not None else x
        y = scaled_dot_product_attention(self._heads(self.q_proj(x)), self._heads(self.k_proj(kv)),
                                         self._heads(self.v_proj(kv)), mask, is_causal=is_causal)
        return self.out_proj(y.transpose(1, 2).flatten(2))
'''

RENAMES = {"scores": "logits", "scale": "factor", "t_q": "nq", "t_k": "nk", "mask": "allowed",
           "weights": "probs", "out": "result", "x": "inp", "context": "memory", "y": "mixed"}  # fmt: skip


def disguise(source: str, renames: dict[str, str] = RENAMES) -> str:
    """What a copier does: the top-level functions and classes in reverse order, then names changed."""
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"(def |class |@)", line) and not (i and lines[i - 1].startswith("@"))]
    head = "".join(lines[: starts[0]])
    blocks = ["".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]
    out = head + "".join(reversed(blocks))
    for old, new in renames.items():
        out = re.sub(rf"\b{old}\b", new, out)
    assert out != source
    return out


def put(subs: Path, sid: str, text: str | bytes, topic: str = "attention") -> None:
    path = subs / sid / topic / f"{topic}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def synthetic_class(subs: Path) -> tuple[set[frozenset], set[frozenset]]:
    """Honest students (the alternative correct implementations in tests/variants plus the
    hand-written two), copiers of three of them, and one who pasted the reference; returns
    the copy pairs and the honest pairs (every other pair, the reference included)."""
    honest = {p.stem: p.read_text() for p in sorted(VARIANTS.glob("*.py"))}
    honest.update(bmm_student=BMM_STUDENT, loopy_student=LOOPY_STUDENT)
    for sid, text in honest.items():
        put(subs, sid, text)
    copies = {"copied_einsum": "einsum_based", "copied_where": "torch_where_masking", "copied_bmm": "bmm_student"}
    for sid, source in copies.items():
        put(subs, sid, disguise(honest[source]))
    put(subs, "pasted_reference", disguise(SOLUTION))
    copy_pairs = {frozenset(p) for p in copies.items()} | {frozenset(("pasted_reference", "reference"))}
    everyone = [*honest, *copies, "pasted_reference", "reference"]
    all_pairs = {frozenset((a, b)) for i, a in enumerate(everyone) for b in everyone[i + 1 :]}
    # A copier and the copied student's other pairs are like the original's: honest.
    return copy_pairs, all_pairs - copy_pairs


def read_pairs(out: Path) -> list[dict]:
    with (out / "similarity.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("similarity")
    subs, out = root / "submissions", root / "out"
    copy_pairs, honest_pairs = synthetic_class(subs)
    put(subs, "only_the_stub", STUB)
    assert similarity.main(str(subs), str(out), "attention") == 0
    return subs, out, copy_pairs, honest_pairs


def test_copies_rank_above_every_honest_pair(compared):
    _, out, copy_pairs, honest_pairs = compared
    scores = {frozenset((r["student_a"], r["student_b"])): float(r["score"]) for r in read_pairs(out)}
    assert copy_pairs <= set(scores), "a copy pair shares no passage at all"
    lowest_copy = min(scores[p] for p in copy_pairs)
    highest_honest = max(scores.get(p, 0.0) for p in honest_pairs)
    print(f"lowest copy pair {lowest_copy:.3f}, highest honest pair {highest_honest:.3f}: gap {lowest_copy - highest_honest:.3f}")
    assert lowest_copy > highest_honest
    ranked = [frozenset((r["student_a"], r["student_b"])) for r in read_pairs(out)]
    assert set(ranked[: len(copy_pairs)]) == copy_pairs


def test_csv_is_ranked_with_the_reference_named(compared):
    _, out, *_ = compared
    text = (out / "similarity.csv").read_text()
    assert text.splitlines()[0] == "topic,student_a,student_b,score"
    rows = read_pairs(out)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert {r["topic"] for r in rows} == {"attention"}
    assert any(r["student_a"] == "pasted_reference" and r["student_b"] == "reference" for r in rows)
    assert all(r["student_a"] != "reference" for r in rows)


def test_the_stubs_boilerplate_is_excluded(compared, tmp_path, monkeypatch):
    """A student who handed in the stub shares nothing with anyone once the stub's text is
    boilerplate; without that exclusion the same student matches the whole class."""
    subs, out, *_ = compared
    assert all("only_the_stub" not in (r["student_a"], r["student_b"]) for r in read_pairs(out))
    monkeypatch.setattr(similarity, "boilerplate_hashes", lambda copydetect, topic: np.array([], dtype=np.int64))
    assert similarity.main(str(subs), str(tmp_path), "attention") == 0
    stub_pairs = [r for r in read_pairs(tmp_path) if "only_the_stub" in (r["student_a"], r["student_b"])]
    assert max(float(r["score"]) for r in stub_pairs) > 0.5


def test_passages_are_shown_for_the_top_pairs(compared):
    _, out, *_ = compared
    page = (out / "similarity.html").read_text()
    assert "attention: copied_bmm and bmm_student" in page or "attention: bmm_student and copied_bmm" in page
    assert page.count("<mark class='a'>") >= 3 and "pasted_reference and reference" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", page)


def test_bad_submissions_are_named_and_left_out(tmp_path, capsys):
    subs, out = tmp_path / "subs", tmp_path / "out"
    put(subs, "honest", SOLUTION)
    put(subs, "latin1", "# caf\xe9\n".encode("latin-1") + SOLUTION.encode())
    put(subs, "binary", b"\x7fELF\x00\x00" + bytes(range(256)))
    put(subs, "broken", SOLUTION.replace("def causal_mask(", "def causal_mask((", 1))
    with zipfile.ZipFile(subs / "zipped.zip", "w") as archive:  # a zip, as `kata grade` takes them
        archive.writestr("zipped/attention/attention.py", SOLUTION)
    (out).mkdir()
    (out / "grades.csv").write_text("keep me\n")
    assert similarity.main(str(subs), str(out), "attention") == 0
    err = capsys.readouterr().err
    assert "latin1/attention/attention.py: not UTF-8 text" in err
    assert "binary/attention/attention.py: not UTF-8 text" in err or "binary/attention/attention.py: holds NUL" in err
    assert "broken/attention/attention.py: not valid Python (line" in err and "Traceback" not in err
    students = {r["student_a"] for r in read_pairs(out)} | {r["student_b"] for r in read_pairs(out)}
    assert {"honest", "broken", "zipped", "reference"} <= students and not students & {"latin1", "binary"}
    assert sorted(p.name for p in out.iterdir()) == ["grades.csv", "similarity.csv", "similarity.html"]
    assert (out / "grades.csv").read_text() == "keep me\n"


@pytest.mark.parametrize("case", ["unknown_folder", "empty_folder", "no_topic_files", "unknown_topic", "no_folder_given"])
def test_bad_usage_is_one_line_and_exit_2(tmp_path, case):
    subs, out = tmp_path / "subs", tmp_path / "out"
    args = [str(subs), "--out", str(out)]
    if case == "empty_folder":
        subs.mkdir()
    elif case == "no_topic_files":
        (subs / "alice").mkdir(parents=True)
        (subs / "alice" / "notes.txt").write_text("hi")
    elif case == "unknown_topic":
        put(subs, "alice", SOLUTION)
        args += ["--topics", "no_such_topic"]
    elif case == "no_folder_given":
        args[0] = ""
    proc = subprocess.run([sys.executable, "-m", "kata", "similarity", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kata: ") and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
