"""`kata report`: the class report from a gradebook, one self-contained HTML file with every
section, plot and the sortable student table, checked in headless Chromium too; bad
gradebooks are refused in one line."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing extra is an error, not a skip
    pytest.importorskip("matplotlib", reason="the instructor extra is not installed: pip install -e '.[instructor]' (make test does)")

from kata import report  # noqa: E402

# The module's gradebook fixture is built once: keep these tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("class-report")

ROOT = Path(__file__).resolve().parent.parent
TOPICS = {"attention": ["test_causal_mask", "test_matches_torch", "test_stable_for_large_logits", "test_mha_matches_torch", "test_speed"],
          "sampling": ["test_temperature", "test_top_k", "test_top_p", "test_repetition_penalty"]}  # fmt: skip
PLOTTED = ("scores", "checks", "mistakes", "completion")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def write_gradebook(folder: Path, n: int = 12, seed: int = 0) -> dict:
    """A gradebook in kata grade's format (grades.csv, results/, mistakes.csv) for a class of
    n students whose check results are drawn at random; returns what the report must show."""
    rng = random.Random(seed)
    (folder / "results").mkdir(parents=True)
    grades = [["student", "topic", "score", "max_score", "status"]]
    passes = {f"{t}: {c}": 0 for t, checks in TOPICS.items() for c in checks}
    mistakes: dict[tuple[str, str], int] = {}
    for i in range(n):
        sid = f"s{i:02d}"
        tests, topics = [], []
        for topic, checks in TOPICS.items():
            if i == n - 1 and topic == "sampling":
                tests.append({"name": topic, "score": 0.0, "max_score": len(checks), "status": "failed", "output": "missing: no file", "visibility": "visible"})
                topics.append({"topic": topic, "score": 0.0, "max_score": len(checks), "status": "missing", "message": "no file", "mistakes": []})
                grades.append([sid, topic, "0", str(len(checks)), "missing"])
                continue
            # The first check is the hardest: its pass rate is the lowest, the last the highest.
            ok = [rng.random() < 0.3 + 0.6 * j / len(checks) for j in range(len(checks))]
            for check, passed in zip(checks, ok):
                name = f"{topic}: {check}"
                passes[name] += passed
                tests.append({"name": name, "score": float(passed), "max_score": 1.0, "status": "passed" if passed else "failed", "output": "", "visibility": "visible"})
            score = sum(ok)
            status = "passed" if all(ok) else "partial" if score else "failed"
            named = []
            if not ok[0]:
                mistake = "no_scaling" if topic == "attention" else "temperature_after_top_k"
                if i % 3 == 0:
                    mistake = "mask_inverted" if topic == "attention" else "top_p_keeps_one_too_few"
                named.append({"name": mistake, "line": f"what {mistake} means", "hints": [2]})
                mistakes[(topic, mistake)] = mistakes.get((topic, mistake), 0) + 1
            topics.append({"topic": topic, "score": float(score), "max_score": len(checks), "status": status, "message": "", "mistakes": named})
            grades.append([sid, topic, str(score), str(len(checks)), status])
        (folder / "results" / f"{sid}.json").write_text(json.dumps({"score": 0, "tests": tests, "extra_data": {"topics": topics}}))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(grades)
    (folder / "grades.csv").write_text(buf.getvalue())
    ranked = sorted(mistakes.items(), key=lambda kv: -kv[1])
    rows = [["topic", "mistake", "students", "description"]] + [[t, m, c, f"what {m} means"] for (t, m), c in ranked]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (folder / "mistakes.csv").write_text(buf.getvalue())
    graded = {name: n - (name.startswith("sampling") and 1) for name in passes}
    return {"students": [f"s{i:02d}" for i in range(n)], "rates": {k: passes[k] / graded[k] for k in passes}, "mistakes": ranked}


def write_similarity(folder: Path) -> None:
    folder.joinpath("similarity.csv").write_text(
        "topic,student_a,student_b,score\nattention,s01,s02,0.970\nattention,s03,reference,0.950\nattention,s01,s04,0.410\n"
    )


class Page(HTMLParser):
    """Sections with the svg and table elements inside each, the student table's rows, and every src/href."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict[str, int]] = {}
        self.section = None
        self.links: list[str] = []
        self.student_rows: list[list[str]] = []
        self.in_students = self.in_body = self.in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href", "xlink:href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "section":
            self.section = attrs["id"]
            self.sections[self.section] = {"svg": 0, "table": 0}
        elif self.section and tag in ("svg", "table"):
            self.sections[self.section][tag] += 1
        if tag == "table" and attrs.get("id") == "student-table":
            self.in_students = True
        if self.in_students and tag == "tbody":
            self.in_body = True
        if self.in_body and tag == "tr":
            self.student_rows.append([])
        if self.in_body and tag == "td":
            self.student_rows[-1].append(attrs.get("data-sort"))

    def handle_endtag(self, tag):
        if tag == "section":
            self.section = None
        if tag == "table":
            self.in_students = self.in_body = False


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / "gradebook"
    expected = write_gradebook(folder)
    write_similarity(folder)
    started = time.perf_counter()
    assert report.main(str(folder)) == 0
    print(f"report of {len(expected['students'])} students: {time.perf_counter() - started:.2f} s")
    return folder, expected, (folder / "report.html").read_text()


def test_every_section_has_its_plot_and_table(book):
    folder, expected, text = book
    page = Page(text)
    assert list(page.sections) == ["scores", "checks", "mistakes", "completion", "students", "similarity"]
    for section in (*PLOTTED, "similarity"):
        assert page.sections[section]["svg"] >= 1, section
    assert page.sections["students"]["table"] == 1
    assert [row[0] for row in page.student_rows] == expected["students"]
    # The last student did not hand in sampling: a row of grades.csv says so.
    last = text[text.index("<td data-sort='s11'>") :].split("</tr>")[0]
    assert "status-missing" in last and "missing</small>" in last


def test_checks_are_worst_first_and_mistakes_most_frequent_first(book):
    _, expected, text = book
    table = text[text.index("id='check-table'") :]
    shown = re.findall(r"<tr><td>((?:attention|sampling): test_\w+)</td>", table)
    rates = expected["rates"]
    assert sorted(shown) == sorted(rates) and [rates[n] for n in shown] == sorted(rates.values())
    table = text[text.index("id='mistake-table'") :]
    named = re.findall(r"<tr><td>(attention|sampling)</td><td>(\w+)</td><td class='num'>(\d+)</td>", table)
    assert [int(c) for _, _, c in named] == sorted((c for _, c in expected["mistakes"]), reverse=True)
    assert {(t, m) for t, m, _ in named} == {k for k, _ in expected["mistakes"]}


def test_completion_counts_every_status(book):
    _, expected, text = book
    table = text[text.index("id='completion-table'") :]
    row = re.search(r"<tr><td>sampling</td>((?:<td class='num'>\d+</td>)+)</tr>", table).group(1)
    counts = dict(zip(report.STATUSES, map(int, re.findall(r"\d+", row))))
    assert counts["missing"] == 1 and sum(counts.values()) == len(expected["students"])


def test_the_report_is_self_contained(book):
    _, _, text = book
    page = Page(text)
    external = [link for link in page.links if re.match(r"\s*(https?:)?//", link)]
    assert not external and not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", text)
    assert "<link" not in text and "@import" not in text and "<script src" not in text
    assert all(link.startswith("#") or link == "similarity.html" for link in page.links), set(page.links)
    # Every plot's ids are its own: none repeats across the inline SVGs.
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_no_similarity_section_without_similarity_csv(tmp_path):
    folder = tmp_path / "gradebook"
    write_gradebook(folder, n=3)
    assert report.main(str(folder)) == 0
    page = Page((folder / "report.html").read_text())
    assert "similarity" not in page.sections and all(page.sections[s]["svg"] for s in PLOTTED)
    assert sorted(p.name for p in folder.iterdir()) == ["grades.csv", "mistakes.csv", "report.html", "results"]


@pytest.mark.parametrize("case", ["missing_folder", "empty_folder", "bad_header", "bad_score", "not_utf8", "no_rows", "missing_similarity"])
def test_a_bad_gradebook_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    folder = tmp_path / "gradebook"
    extra = []
    if case != "missing_folder":
        folder.mkdir()
    if case == "bad_header":
        (folder / "grades.csv").write_text("name,points\nalice,3\n")
    elif case == "bad_score":
        (folder / "grades.csv").write_text("student,topic,score,max_score,status\nalice,attention,lots,5,passed\n")
    elif case == "not_utf8":
        (folder / "grades.csv").write_bytes(b"student,topic,score,max_score,status\n\xff\xfe,attention,1,5,partial\n")
    elif case == "no_rows":
        (folder / "grades.csv").write_text("student,topic,score,max_score,status\n")
    elif case == "missing_similarity":
        write_gradebook(folder, n=2)
        extra = ["--similarity", str(tmp_path / "nope.csv")]
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    proc = subprocess.run([sys.executable, "-m", "kata", "report", str(folder), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kata: ") and "Traceback" not in proc.stderr, proc.stderr
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == before


def test_report_of_a_class_graded_by_kata_grade(tmp_path):
    """A real `kata grade` of a tiny class (the solution, a known mistake, the stub) makes a
    report whose student table and named mistake come from it."""
    from tests.grading import mutant_source, warm_env

    subs, out = tmp_path / "subs", tmp_path / "gradebook"
    topic = "quantization"  # the quickest topic to grade
    sources = {"honest": (ROOT / f"solutions/{topic}/{topic}.py").read_text(),
               "min_max_scale": mutant_source(ROOT / f"tests/mutants/{topic}/asymmetric_min_max_scale.diff"),
               "not_begun": (ROOT / f"exercises/{topic}/{topic}.py").read_text()}  # fmt: skip
    for sid, text in sources.items():
        (subs / sid / topic).mkdir(parents=True)
        (subs / sid / topic / f"{topic}.py").write_text(text)
    cmd = [sys.executable, "-m", "kata", "grade", str(subs), "--out", str(out), "--topics", topic, "--jobs", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=warm_env())
    assert proc.returncode == 0, proc.stderr
    assert report.main(str(out)) == 0
    text = (out / "report.html").read_text()
    page = Page(text)
    assert [row[0] for row in page.student_rows] == ["honest", "min_max_scale", "not_begun"]
    assert all(page.sections[s]["svg"] for s in PLOTTED)
    assert "<td>asymmetric_min_max_scale</td>" in text, proc.stderr
    totals = {row[0]: float(row[1]) for row in page.student_rows}
    assert totals["honest"] > totals["min_max_scale"] > totals["not_begun"] == 0


def _chromium_or_skip():
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return
    why = f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver; .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test: {why}")
    pytest.skip(why)


def test_the_browser_test_cannot_be_skipped_under_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")

    def outcome():
        try:
            _chromium_or_skip()
        except BaseException as exc:  # pytest's skip and fail outcomes are BaseExceptions
            return exc
        return None

    monkeypatch.setenv("CI", "true")
    under_ci = outcome()
    monkeypatch.delenv("CI")
    elsewhere = outcome()
    assert isinstance(under_ci, pytest.fail.Exception) and "CI must run the browser test" in str(under_ci), repr(under_ci)
    assert isinstance(elsewhere, pytest.skip.Exception) and "no-chromium" in str(elsewhere), repr(elsewhere)


def test_the_report_renders_in_headless_chromium(book, tmp_path):
    """The report in a real browser: no console errors, every plot drawn with a size, the
    student table there and sorted by a click on a header; a screenshot is kept."""
    _chromium_or_skip()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"selenium is missing under CI: {exc}")
        pytest.skip(f"selenium is missing: {exc}")
    folder, expected, _ = book
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000",
                f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get((folder / "report.html").as_uri())
        assert driver.title.startswith("Class report")
        for section in (*PLOTTED, "similarity"):
            svgs = driver.find_elements(By.CSS_SELECTOR, f"section#{section} svg.plot")
            assert svgs, section
            assert all(s.size["width"] > 100 and s.size["height"] > 50 for s in svgs), (section, [s.size for s in svgs])
        rows = driver.find_elements(By.CSS_SELECTOR, "#student-table tbody tr")
        assert len(rows) == len(expected["students"])

        def column(n):
            return [float(td.get_attribute("data-sort")) for td in driver.find_elements(By.CSS_SELECTOR, f"#student-table tbody tr td:nth-child({n})")]

        header = driver.find_element(By.XPATH, "//table[@id='student-table']//th[text()='total']")
        header.click()
        assert header.get_attribute("aria-sort") == "ascending" and column(2) == sorted(column(2))
        header.click()
        assert header.get_attribute("aria-sort") == "descending" and column(2) == sorted(column(2), reverse=True)
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
    kept = [shot]
    if os.environ.get("KATA_ARTEFACTS"):
        dest = Path(os.environ["KATA_ARTEFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        kept.append(Path(shutil.copy(shot, dest / "report.png")))
    print("screenshot of the report: " + ", ".join(map(str, kept)))
