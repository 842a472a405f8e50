"""Copy detection: `kata similarity SUBMISSIONS [--out DIR] [--topics a,b] [--threshold S]`.

SUBMISSIONS is laid out as for `kata grade`: one entry per student, a folder shaped like
exercises/ (SUBMISSIONS/<student>/<topic>/<topic>.py) or a .zip of one. For every topic,
every pair of submissions is compared, and every submission with the reference solution
(solutions/<topic>/<topic>.py, which learners can read), by copydetect's winnowing
fingerprints (the algorithm behind MOSS): each file is tokenised by pygments with every
name replaced by one letter (so renaming variables changes nothing) and every string by
another (docstrings and messages too), and hashed in k-grams of `NOISE` tokens; two files
share a passage where they share a k-gram. The stub (exercises/<topic>/<topic>.py: the
signatures, docstrings and given scaffolding every submission starts from) is boilerplate:
its k-grams are removed from every file before comparing, so a class that only wrote the
bodies shares nothing through the stub.

A pair's score is the larger of the two fractions copydetect gives (the share of each
file's fingerprinted tokens found in the other), so a file copied into a longer one still
scores high; against the reference it is the submission's own fraction.

Writes, in --out (default gradebook/, where `kata report` finds it):
    similarity.csv    topic,student_a,student_b,score: every pair sharing any passage,
                      highest score first (student_b is `reference` for the solution)
    similarity.html   the pairs scoring at least --threshold (default 0.8), best first,
                      each file shown whole with the passages it shares highlighted

Nothing else is written. Exit codes: 0 written; 2 bad usage (no such folder, no
submissions in it, an unknown topic, no readable submission of any topic).
"""

from __future__ import annotations

import ast
import csv
import html
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kata import course
from kata.files import write_atomically

# copydetect's own defaults: a shared passage is at least 25 filtered tokens long, and
# every passage that long is found (window 1: every k-gram hash is a fingerprint).
NOISE = 25
GUARANTEE = 25
THRESHOLD = 0.8
SHOWN = 200  # at most this many pairs get their passages in similarity.html
REFERENCE = "reference"
MAX_FILE_BYTES = 1 << 20  # a topic file over 1 MiB is not a hand-written submission


class UsageError(ValueError):
    """Bad input for the whole run (exit 2)."""


@dataclass
class Pair:
    topic: str
    student_a: str
    student_b: str
    score: float
    passages_a: object = None  # copydetect's 2xN start/end offsets into the raw code
    passages_b: object = None


def _detector():
    """copydetect, imported late (it pulls in matplotlib), with matplotlib kept off any display."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import copydetect
        from copydetect import utils
    except ImportError as exc:  # pragma: no cover - the instructor extra is missing
        raise UsageError(f"copydetect is not installed ({exc}): run `make similarity`, or pip install -e '.[instructor]'") from exc
    return copydetect, utils


def read_submissions(submissions: Path, topics: list[str], warn) -> dict[str, dict[str, str]]:
    """topic -> student -> source, for every readable <topic>/<topic>.py (folders and zips as
    `kata grade` takes them). Unreadable files are reported through warn() and left out."""
    from kata import grade

    found: dict[str, dict[str, str]] = {t: {} for t in topics}
    for sid, entry in grade.find_submissions(submissions).items():
        if sid == REFERENCE:  # the name the reference solution goes by in similarity.csv
            warn(f"a student is named {REFERENCE!r}: listed as 'student:{REFERENCE}'")
            sid = f"student:{REFERENCE}"
        try:
            # The files kata grade would grade: the same private copy's rules.
            files = {t: data for t, data in grade.submitted_files(entry, topics).items() if data is not None}
        except (grade.Refused, OSError) as exc:
            warn(f"{sid}: submission refused: {exc}; skipped")
            continue
        for topic, data in files.items():
            where = f"{sid}/{topic}/{topic}.py"
            if len(data) > MAX_FILE_BYTES:
                warn(f"{where}: {len(data)} bytes, over {MAX_FILE_BYTES} (not a hand-written file); skipped")
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                warn(f"{where}: not UTF-8 text (byte {exc.start}); skipped")
                continue
            if "\x00" in text:
                warn(f"{where}: holds NUL bytes, not Python source; skipped")
                continue
            try:
                ast.parse(text)
            except SyntaxError as exc:
                # Broken code can still be copied code: compared all the same, and said.
                warn(f"{where}: not valid Python (line {exc.lineno}: {exc.msg}); compared as tokens all the same")
            found[topic][sid] = text
    return found


def fingerprint(copydetect, name: str, text: str, boilerplate):
    """copydetect's fingerprint of one file, the boilerplate's k-grams removed. Removed here
    rather than by its `boilerplate` argument: that one (copydetect 0.5) intersects with
    assume_unique=True on hashes that repeat, so a stub k-gram the file holds twice keeps one
    occurrence and a k-gram merely repeated in the file loses one."""
    from copydetect import utils

    fp = copydetect.CodeFingerprint(name, NOISE, GUARANTEE - NOISE + 1, fp=io.StringIO(text), language="python")
    drop = set(boilerplate.tolist()) & fp.hashes if len(boilerplate) else set()
    if drop:
        fp.hashes = fp.hashes - drop
        fp.hash_idx = {h: i for h, i in fp.hash_idx.items() if h not in drop}
        fp.token_coverage = utils.get_token_coverage(fp.hash_idx, fp.k, len(fp.filtered_code))
    return fp


def boilerplate_hashes(copydetect, topic: course.Topic):
    """Every k-gram of the stub (window 1, as copydetect's CopyDetector takes boilerplate)."""
    import numpy as np

    stub = topic.file_in(course.EXERCISES)
    if not stub.is_file():
        return np.array([], dtype=np.int64)
    fp = copydetect.CodeFingerprint(str(stub), NOISE, 1, language="python", fp=io.StringIO(stub.read_text()))
    return np.unique(np.array(list(fp.hashes)))


def compare_topic(topic: course.Topic, sources: dict[str, str]) -> tuple[list[Pair], dict[str, str]]:
    """Every pair of the topic's submissions, and each with the reference: pairs sharing any
    passage, best first; and the sources by name (the reference's included) for the passages."""
    copydetect, _ = _detector()
    boiler = boilerplate_hashes(copydetect, topic)
    prints = {sid: fingerprint(copydetect, f"{sid}.py", text, boiler) for sid, text in sorted(sources.items())}
    texts = dict(sources)
    reference = topic.file_in(course.SOLUTIONS)
    ref_print = None
    if reference.is_file():
        texts[REFERENCE] = reference.read_text()
        ref_print = fingerprint(copydetect, "reference.py", texts[REFERENCE], boiler)
    pairs = []
    names = sorted(prints)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            overlap, (sim_a, sim_b), (slices_a, slices_b) = copydetect.compare_files(prints[a], prints[b])
            if overlap:
                pairs.append(Pair(topic.name, a, b, float(max(sim_a, sim_b)), slices_a, slices_b))
        if ref_print is not None:
            overlap, (sim_a, _), (slices_a, slices_b) = copydetect.compare_files(prints[a], ref_print)
            if overlap:
                pairs.append(Pair(topic.name, a, REFERENCE, float(sim_a), slices_a, slices_b))
    pairs.sort(key=lambda p: (-p.score, p.student_a, p.student_b))
    return pairs, texts


def similarity_csv(pairs: list[Pair]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["topic", "student_a", "student_b", "score"])
    for p in pairs:
        writer.writerow([p.topic, p.student_a, p.student_b, f"{p.score:.3f}"])
    return buf.getvalue()


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Similar submissions</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.pair {{ border-top: 1px solid #ccc; margin-top: 1.5em; }}
.files {{ display: flex; gap: 1em; }}
.files > div {{ flex: 1; min-width: 0; }}
pre {{ background: #f7f7f7; padding: .5em; overflow-x: auto; font-size: 12px; }}
mark.a {{ background: #ffc9c9; }} mark.b {{ background: #c9f2c9; }}
</style></head><body>
<h1>Similar submissions</h1>
<p>copydetect's winnowing fingerprints (k = {k} tokens, names and strings normalised, the stub's
text excluded); a pair's score is the larger share of either file found in the other. Pairs scoring
at least {threshold:g}, best first ({shown} of {total} pairs that share any passage; all of them are in
similarity.csv). Shared passages are highlighted.</p>
{body}
</body></html>
"""


def _highlight(utils, text: str, slices, cls: str) -> str:
    import numpy as np

    if slices is None or np.size(slices) == 0:
        return html.escape(text)
    marked, _ = utils.highlight_overlap(text, np.asarray(slices), f"<mark class='{cls}'>", "</mark>", escape_html=True)
    return marked


def similarity_html(pairs: list[Pair], texts: dict[tuple[str, str], str], threshold: float) -> str:
    _, utils = _detector()
    chosen = [p for p in pairs if p.score >= threshold][:SHOWN]
    parts = []
    for n, p in enumerate(chosen, 1):
        a = _highlight(utils, texts[(p.topic, p.student_a)], p.passages_a, "a")
        b = _highlight(utils, texts[(p.topic, p.student_b)], p.passages_b, "b")
        parts.append(
            f"<div class='pair' id='pair-{n}'><h2>{n}. {html.escape(p.topic)}: {html.escape(p.student_a)} and "
            f"{html.escape(p.student_b)}: {p.score:.3f}</h2><div class='files'>"
            f"<div><h3>{html.escape(p.student_a)}</h3><pre>{a}</pre></div>"
            f"<div><h3>{html.escape(p.student_b)}</h3><pre>{b}</pre></div></div></div>"
        )
    body = "\n".join(parts) or "<p>No pair reaches the threshold.</p>"
    return PAGE.format(k=NOISE, threshold=threshold, shown=len(chosen), total=len(pairs), body=body)


def run(submissions: Path, out: Path, topics: list[str] | None = None, threshold: float = THRESHOLD) -> int:
    started = time.monotonic()
    submissions = submissions.expanduser()
    if not submissions.is_dir():
        raise UsageError(f"no folder {submissions}: submissions is a folder with one entry (folder or .zip) per student")
    from kata import grade

    if not grade.find_submissions(submissions):
        raise UsageError(f"{submissions} holds no submissions (one folder or .zip per student)")
    try:
        chosen = [course.get(t) for t in topics] if topics else list(course.topics())
    except course.UnknownTopic as exc:
        raise UsageError(str(exc)) from exc
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold is a score between 0 and 1, not {threshold:g}")

    def warn(line: str) -> None:
        print(f"kata similarity: {line}", file=sys.stderr)

    found = read_submissions(submissions, [t.name for t in chosen], warn)
    if not any(found.values()):
        raise UsageError(f"no readable <topic>/<topic>.py of {', '.join(t.name for t in chosen)} in {submissions}")
    pairs, texts, counts = [], {}, []
    for topic in chosen:
        sources = found[topic.name]
        if not sources:
            continue
        topic_pairs, topic_texts = compare_topic(topic, sources)
        pairs += topic_pairs
        texts.update({(topic.name, name): text for name, text in topic_texts.items()})
        counts.append(f"{topic.name}: {len(sources)} submissions")
    pairs.sort(key=lambda p: (-p.score, p.topic, p.student_a, p.student_b))
    write_atomically(out / "similarity.csv", similarity_csv(pairs))
    write_atomically(out / "similarity.html", similarity_html(pairs, texts, threshold))
    above = [p for p in pairs if p.score >= threshold]
    for p in above[:10]:
        print(f"  {p.topic}: {p.student_a} ~ {p.student_b}: {p.score:.3f}", file=sys.stderr)
    print(f"{'; '.join(counts)}; {len(above)} pairs score at least {threshold:g} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    print(f"wrote {out / 'similarity.csv'} ({len(pairs)} pairs), {out / 'similarity.html'}", file=sys.stderr)
    return 0


def main(submissions: str, out: str, topics: str = "", threshold: float = THRESHOLD) -> int:
    names = [t.strip() for t in topics.split(",") if t.strip()]
    if not submissions.strip():
        print("kata: give the submissions folder: make similarity submissions=DIR (one entry per student)", file=sys.stderr)
        return 2
    try:
        return run(Path(submissions), Path(out), names or None, threshold)
    except UsageError as exc:
        print(f"kata: {exc}", file=sys.stderr)
        return 2
