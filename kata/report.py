"""The class report: `kata report [GRADEBOOK] [--similarity CSV]` writes GRADEBOOK/report.html.

It reads only the gradebook `kata grade` wrote (so it works on one built elsewhere, on a
cluster): grades.csv (student,topic,score,max_score,status), results/<student>.json
(Gradescope's format: one test per check named "topic: check"; extra_data.topics with each
topic's status and diagnosed mistakes), mistakes.csv (topic,mistake,students,description)
and, when present, similarity.csv from `kata similarity` (or the file --similarity names).

report.html is one self-contained file: inline CSS, plots drawn by matplotlib (Agg) as
inline SVG, a little inline JavaScript that sorts the student table; no external URL, so
it opens anywhere without a network. Sections:
    scores       the score distribution of every topic (share of the topic's points)
    checks       the pass rate of every check, worst first (plot of the worst, table of all)
    mistakes     the class's most frequent named mistakes (from the mistake diagnosis)
    completion   per topic: passed, partial, failed, not started, error, timeout, missing
    students     every student's score per topic and in total (click a header to sort)
    similarity   the most similar pairs of submissions (only when similarity.csv is there)

Exit codes: 0 written; 2 bad usage (no such folder, not a gradebook, a malformed file).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kata.files import write_atomically

STATUSES = ("passed", "partial", "failed", "not_started", "timeout", "error", "missing")
COLOURS = {"passed": "#2e7d32", "partial": "#9ccc65", "failed": "#e53935", "not_started": "#bdbdbd",
           "timeout": "#ff9800", "error": "#6d4c41", "missing": "#90a4ae"}  # fmt: skip
GRADES_HEADER = ["student", "topic", "score", "max_score", "status"]
WORST_PLOTTED = 30  # checks in the pass-rate plot (the table has them all)
MISTAKES_PLOTTED = 15
PAIRS_SHOWN = 50


class UsageError(ValueError):
    """Bad input (exit 2); nothing is written."""


@dataclass
class Gradebook:
    folder: Path
    rows: list[dict]  # grades.csv
    topics: list[str]  # in the order grades.csv first names them
    students: list[str]
    checks: dict[str, list[int]] = field(default_factory=dict)  # "topic: check" -> [passed, graded]
    mistakes: list[dict] = field(default_factory=list)  # topic, mistake, students, description
    similarity: list[dict] | None = None  # topic, student_a, student_b, score
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def _read_csv(path: Path, header: list[str]) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != header:
        raise UsageError(f"{path} does not start with the header {','.join(header)}")
    return list(reader)


def load(folder: Path, similarity: Path | None = None) -> Gradebook:
    if not folder.is_dir():
        raise UsageError(f"no folder {folder}: give the gradebook folder `kata grade` wrote (default gradebook/)")
    grades = folder / "grades.csv"
    if not grades.is_file():
        raise UsageError(f"no grades.csv in {folder}: not a gradebook written by `kata grade` (or an empty one)")
    rows = _read_csv(grades, GRADES_HEADER)
    if not rows:
        raise UsageError(f"{grades} has no rows: nothing was graded")
    for n, r in enumerate(rows, 2):
        try:
            r["score"], r["max_score"] = float(r["score"]), float(r["max_score"])
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{grades} line {n}: score and max_score must be numbers") from exc
        if r["status"] not in STATUSES:
            raise UsageError(f"{grades} line {n}: unknown status {r['status']!r} (one of {', '.join(STATUSES)})")
    topics = list(dict.fromkeys(r["topic"] for r in rows))
    students = sorted({r["student"] for r in rows})
    book = Gradebook(folder, rows, topics, students)

    counts: dict[str, list[int]] = {}
    from_results: Counter = Counter()
    descriptions: dict[tuple[str, str], str] = {}
    for sid in students:
        path = folder / "results" / f"{sid}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            tests, topics_data = data["tests"], data["extra_data"]["topics"]
        except FileNotFoundError:
            book.warnings.append(f"no results/{sid}.json: {sid}'s checks are not in the pass rates")
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            book.warnings.append(f"results/{sid}.json is damaged ({type(exc).__name__}); {sid}'s checks are left out")
            continue
        for t in tests:
            name = str(t.get("name", ""))
            if ": " not in name:  # a topic that did not run (missing, refused): no check to count
                continue
            c = counts.setdefault(name, [0, 0])
            c[0] += t.get("status") == "passed"
            c[1] += 1
        for t in topics_data:
            for m in t.get("mistakes") or []:
                from_results[(t["topic"], m["name"])] += 1
                descriptions[(t["topic"], m["name"])] = m.get("line", "")
    book.checks = counts
    mistakes = folder / "mistakes.csv"
    if mistakes.is_file():
        book.mistakes = _read_csv(mistakes, ["topic", "mistake", "students", "description"])
        for n, m in enumerate(book.mistakes, 2):
            try:
                m["students"] = int(m["students"])
            except ValueError as exc:
                raise UsageError(f"{mistakes} line {n}: students must be a whole number") from exc
    else:
        book.mistakes = [{"topic": t, "mistake": name, "students": n, "description": descriptions[(t, name)]}
                         for (t, name), n in from_results.items()]  # fmt: skip
    book.mistakes.sort(key=lambda m: (-m["students"], m["topic"], m["mistake"]))

    sim = similarity if similarity is not None else folder / "similarity.csv"
    if similarity is not None and not sim.is_file():
        raise UsageError(f"no file {sim}: --similarity names the similarity.csv `kata similarity` wrote")
    if sim.is_file():
        pairs = _read_csv(sim, ["topic", "student_a", "student_b", "score"])
        for n, p in enumerate(pairs, 2):
            try:
                p["score"] = float(p["score"])
            except ValueError as exc:
                raise UsageError(f"{sim} line {n}: score must be a number") from exc
        book.similarity = sorted(pairs, key=lambda p: -p["score"])
    return book


# ---------------------------------------------------------------- plots


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - the instructor extra is missing
        raise UsageError(f"matplotlib is not installed ({exc}): run `make report`, or pip install -e '.[instructor]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


class Plots:
    """Figures as inline SVG, each with its element ids prefixed so several fit in one page."""

    def __init__(self):
        self.plt = _pyplot()
        self.count = 0

    def svg(self, fig, label: str) -> str:
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        self.plt.close(fig)
        self.count += 1
        text = buf.getvalue()
        text = text[text.index("<svg") :]  # no XML declaration, no DOCTYPE (it names a URL)
        text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
        prefix = f"plot{self.count}-"
        text = re.sub(r'\bid="', f'id="{prefix}', text)
        text = re.sub(r"url\(#", f"url(#{prefix}", text)
        text = re.sub(r'href="#', f'href="#{prefix}', text)
        text = text.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" class="plot" ', 1)
        return text


def score_plot(plots: Plots, book: Gradebook) -> str:
    plt = plots.plt
    n = len(book.topics)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    bins = [i * 10 for i in range(11)]
    for ax, topic in zip(axes.flat, book.topics):
        shares = [100 * r["score"] / r["max_score"] if r["max_score"] else 0.0 for r in book.rows if r["topic"] == topic]
        ax.hist(shares, bins=bins, color="#1565c0", edgecolor="white")
        ax.set_title(topic)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of points")
        ax.yaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("students")
    fig.tight_layout()
    return plots.svg(fig, "score distribution per topic")


def check_plot(plots: Plots, worst: list[tuple[str, float, int]]) -> str:
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.22 * len(worst)))
    names = [name for name, _, _ in worst][::-1]
    rates = [100 * rate for _, rate, _ in worst][::-1]
    ax.barh(names, rates, color=["#e53935" if r < 50 else "#fb8c00" if r < 80 else "#43a047" for r in rates])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of students passing")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return plots.svg(fig, "pass rate of the worst checks")


def mistake_plot(plots: Plots, mistakes: list[dict]) -> str:
    plt = plots.plt
    shown = mistakes[:MISTAKES_PLOTTED][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.25 * len(shown)))
    ax.barh([f"{m['topic']}: {m['mistake']}" for m in shown], [m["students"] for m in shown], color="#8e24aa")
    ax.set_xlabel("students")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return plots.svg(fig, "most frequent named mistakes")


def completion_plot(plots: Plots, book: Gradebook, counts: dict[str, Counter]) -> str:
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.3 * len(book.topics)))
    topics = book.topics[::-1]
    left = [0] * len(topics)
    for status in STATUSES:
        values = [counts[t][status] for t in topics]
        if any(values):
            ax.barh(topics, values, left=left, color=COLOURS[status], label=status.replace("_", " "), edgecolor="white")
            left = [a + b for a, b in zip(left, values)]
    ax.set_xlabel("students")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return plots.svg(fig, "completion per topic")


def similarity_plot(plots: Plots, pairs: list[dict]) -> str:
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7.5, 2.2))
    ax.hist([p["score"] for p in pairs], bins=[i / 20 for i in range(21)], color="#546e7a", edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel("similarity score of a pair (1: the same code up to names)")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    return plots.svg(fig, "similarity scores of all pairs")


# ---------------------------------------------------------------- the page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 70em; padding: 1em 1.5em; color: #222; }
h1 { margin-bottom: .2em; } section { margin-top: 2em; } .muted { color: #666; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 13px; margin-top: .5em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#student-table th { cursor: pointer; user-select: none; background: #f3f3f3; position: sticky; top: 0; }
#student-table th[aria-sort=ascending]::after { content: " \\25B2"; }
#student-table th[aria-sort=descending]::after { content: " \\25BC"; }
.status-passed { color: #2e7d32; } .status-failed, .status-error { color: #c62828; } .status-timeout { color: #ef6c00; }
.status-missing, .status-not_started { color: #888; }
svg.plot { max-width: 100%; height: auto; display: block; }
details { margin-top: .5em; }
"""

SORT_JS = """
(function () {
  var table = document.getElementById("student-table");
  var body = table.tBodies[0];
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return ascending ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
"""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset(), attrs: str = "") -> str:
    head = "".join(f"<th class='num'>{_e(h)}</th>" if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build(book: Gradebook) -> str:
    plots = Plots()
    by_student: dict[str, dict[str, dict]] = defaultdict(dict)
    completion: dict[str, Counter] = {t: Counter() for t in book.topics}
    for r in book.rows:
        by_student[r["student"]][r["topic"]] = r
        completion[r["topic"]][r["status"]] += 1
    for topic in book.topics:  # a student without a row for a topic did not hand it in
        completion[topic]["missing"] += sum(1 for s in book.students if topic not in by_student[s])

    sections = []
    # Score distribution.
    summary = []
    for topic in book.topics:
        rows = [r for r in book.rows if r["topic"] == topic]
        shares = sorted(r["score"] / r["max_score"] if r["max_score"] else 0.0 for r in rows)
        median = shares[len(shares) // 2] if len(shares) % 2 else (shares[len(shares) // 2 - 1] + shares[len(shares) // 2]) / 2
        summary.append([topic, len(rows), f"{rows[0]['max_score']:g}", f"{100 * sum(shares) / len(shares):.0f} %", f"{100 * median:.0f} %"])
    sections.append(("scores", "Score distribution per topic",
                     score_plot(plots, book) + _table(["topic", "students", "points", "mean", "median"], summary, {1, 2, 3, 4})))  # fmt: skip

    # Pass rate of every check, worst first.
    rates = sorted(((name, p / n, n) for name, (p, n) in book.checks.items() if n), key=lambda c: (c[1], c[0]))
    if rates:
        worst = rates[:WORST_PLOTTED]
        body = (f"<p class='muted'>{len(rates)} checks; the plot shows the {len(worst)} with the lowest pass rate, the table every one.</p>"
                + check_plot(plots, worst)
                + "<details><summary>every check, worst first (click to open)</summary>"
                + _table(["check", "passing", "students graded", "pass rate"], [[n, round(r * c), c, f"{100 * r:.0f} %"] for n, r, c in rates], {1, 2, 3}, " id='check-table'")
                + "</details>")  # fmt: skip
    else:
        body = "<p class='muted'>No per-check results in results/ (no topic ran a check).</p>"
    sections.append(("checks", "Pass rate of every check", body))

    # Named mistakes.
    if book.mistakes:
        body = (mistake_plot(plots, book.mistakes)
                + _table(["topic", "mistake", "students", "what it is"], [[m["topic"], m["mistake"], m["students"], m["description"]] for m in book.mistakes], {2}, " id='mistake-table'"))  # fmt: skip
    else:
        body = "<p class='muted'>No failure in this gradebook matches a known mistake (see README, \"Which mistake was it\").</p>"
    sections.append(("mistakes", "Most frequent named mistakes", body))

    # Completion.
    comp_rows = [[t, *(completion[t][s] for s in STATUSES)] for t in book.topics]
    sections.append(("completion", "Completion per topic",
                     completion_plot(plots, book, completion)
                     + _table(["topic", *(s.replace("_", " ") for s in STATUSES)], comp_rows, set(range(1, len(STATUSES) + 1)), " id='completion-table'")))  # fmt: skip

    # Students.
    head = ["student", "total", "max", "%"] + book.topics
    cells = []
    for sid in book.students:
        mine = by_student[sid]
        total = sum(r["score"] for r in mine.values())
        most = sum(r["max_score"] for r in mine.values())
        row = [f"<td data-sort='{_e(sid)}'>{_e(sid)}</td>", f"<td class='num' data-sort='{total:g}'>{total:g}</td>",
               f"<td class='num' data-sort='{most:g}'>{most:g}</td>",
               f"<td class='num' data-sort='{(100 * total / most if most else 0):.4f}'>{(100 * total / most if most else 0):.0f}</td>"]  # fmt: skip
        for topic in book.topics:
            r = mine.get(topic)
            if r is None:
                row.append("<td class='num status-missing' data-sort='-1'>-</td>")
            else:
                row.append(f"<td class='num status-{_e(r['status'])}' data-sort='{r['score']:g}' title='{_e(r['status'])}'>"
                           f"{r['score']:g} <small>{_e(r['status'].replace('_', ' '))}</small></td>")  # fmt: skip
        cells.append("<tr>" + "".join(row) + "</tr>")
    numeric = {1, 2, 3, *range(4, len(head))}
    thead = "".join(f"<th class='num'>{_e(h)}</th>" if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(head))
    sections.append(("students", "Students",
                     "<p class='muted'>Click a column header to sort by it (again to reverse).</p>"
                     f"<table id='student-table'><thead><tr>{thead}</tr></thead><tbody>{''.join(cells)}</tbody></table>"))  # fmt: skip

    # Similarity.
    if book.similarity is not None:
        pairs = book.similarity
        link = ("<p>The shared passages of the top pairs are in <a href='similarity.html'>similarity.html</a>.</p>"
                if (book.folder / "similarity.html").is_file() else "")  # fmt: skip
        if pairs:
            body = (f"<p class='muted'>copydetect's winnowing fingerprints (the algorithm behind MOSS), the stub excluded; "
                    f"student_b <code>reference</code> is the reference solution. {len(pairs)} pairs share a passage; the {min(len(pairs), PAIRS_SHOWN)} most similar:</p>"
                    + link + similarity_plot(plots, pairs)
                    + _table(["topic", "student_a", "student_b", "score"], [[p["topic"], p["student_a"], p["student_b"], f"{p['score']:.3f}"] for p in pairs[:PAIRS_SHOWN]], {3}, " id='similarity-table'"))  # fmt: skip
        else:
            body = "<p class='muted'>similarity.csv lists no pair: no two submissions share a passage.</p>"
        sections.append(("similarity", "Similar submissions", body))

    nav = "".join(f"<a href='#{sid}'>{_e(title)}</a>" for sid, title, _ in sections)
    main = "".join(f"<section id='{sid}'><h2>{_e(title)}</h2>{body}</section>" for sid, title, body in sections)
    warnings = "".join(f"<li>{_e(w)}</li>" for w in book.warnings)
    warnings = f"<details><summary>{len(book.warnings)} warnings</summary><ul>{warnings}</ul></details>" if warnings else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Class report: {_e(book.folder.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>Class report</h1><p class='muted'>{_count(len(book.students), 'student')}, {_count(len(book.topics), 'topic')} "
        f"({_e(', '.join(book.topics))}), from {_e(book.folder)}; written {time.strftime('%Y-%m-%d %H:%M %Z')}.</p>"
        f"{warnings}<nav>{nav}</nav>{main}<script>{SORT_JS}</script></body></html>\n"
    )


def run(folder: Path, similarity: Path | None = None) -> Path:
    book = load(folder, similarity)
    page = build(book)
    out = folder / "report.html"
    write_atomically(out, page)
    return out


def main(gradebook: str, similarity: str | None = None) -> int:
    started = time.monotonic()
    try:
        out = run(Path(gradebook).expanduser(), Path(similarity).expanduser() if similarity else None)
    except UsageError as exc:
        print(f"kata: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, {time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0
