"""Build the Gradescope autograder bundle: `kata gradescope [--out ZIP] [--topics a,b] [--hidden DIR]`.

The zip holds Gradescope's two scripts at its top (gradescope/setup.sh and
gradescope/run_autograder) and the suite beside them: the engine, the graders, the
reference solutions (speed ratios and max scores need them) and the course file. On
Gradescope it lands in /autograder/source; run_autograder then grades each upload with
`kata grade-one`, the same per-student grading `kata grade` does for a whole class.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from kata import course

SUITE = ["kata", "graders", "solutions", "course.toml", "pyproject.toml", "conftest.py", "README.md"]
SCRIPTS = course.ROOT / "gradescope"


def _files(path: Path):
    if path.is_file():
        yield path
    else:
        yield from (p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".egg-info"))


def build_bundle(out: Path, topics: list[course.Topic], hidden: Path | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("setup.sh", "run_autograder"):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o100755 << 16  # executable, as Gradescope runs them
            z.writestr(info, (SCRIPTS / name).read_bytes())
        for entry in SUITE:
            for path in _files(course.ROOT / entry):
                z.write(path, path.relative_to(course.ROOT).as_posix())
        if hidden is not None:
            for path in _files(hidden):
                z.write(path, f"hidden/{path.relative_to(hidden).as_posix()}")
        z.writestr("topics.txt", ",".join(t.name for t in topics) + "\n")
    tmp.replace(out)
    return out
