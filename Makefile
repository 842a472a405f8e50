# The front door. `make check topic=attention` and `make test` set everything up on first use.
#
#   make check topic=T [impl=exercises|solutions|PATH] [device=auto|cpu|cuda|mps] [only=test_a,test_b]
#   make list            the course with your progress;  make hint topic=T [n=all]: the next hint
#   make watch topic=T   grade again on every save;  make solution topic=T: the reference and a diff
#   make reset topic=T   restore the stub (your file is backed up);  make notebook topic=T: a paired notebook
#   make solutions-branch  the git branch 'solutions', exercises/ holding the answers (work tree untouched)
#   make test            the project's own tests (graders vs solutions, stubs, mutants, variants)
#   make stubs [topics=a,b]  regenerate exercises/ stubs from solutions/ (backs up any file it replaces)
#   make fingerprints [topics=a,b]  grade every mutant on every check: graders/fingerprints/,
#                        the known-mistake diagnosis and the topic READMEs' "Common mistakes"
#   make grade submissions=DIR [out=DIR] [topics=a,b] [jobs=N] [hidden=DIR] [force=1] [require_sandbox=1] [cluster=ADDRESS]
#                        grade a whole class into out/ (default gradebook/): grades.csv, feedback, results;
#                        with cluster=tcp://host:8786, on a Dask cluster (kata/cluster.py)
#   make gradescope [topics=a,b] [hidden=DIR]
#                        build dist/gradescope-autograder.zip (setup.sh, run_autograder, the suite)
#   make nbgrader [topics=a,b] [course=DIR]
#                        build an nbgrader course folder (default build/nbgrader) from the katas
#   make report [gradebook=DIR]  the class report: DIR/report.html (default gradebook/), one self-contained file
#   make similarity submissions=DIR [out=DIR]
#                        copy detection: out/similarity.csv and similarity.html (default gradebook/)
#   make bench           how long a check takes, and the graders' measured speed ratios
#   make bench-grade     grading throughput: kata grade against nbgrader autograde on one synthetic class
#   make bench-watch     make watch's save-to-verdict time, in a private copy of the suite
#   make bench-cluster   grading throughput on a local Dask cluster (two workers) against the local pool
#   make topics          the course, in order
#
# GPU users: install a CUDA build of torch into .venv before the first make (see README),
# or pass TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
topic  ?=
impl   ?= exercises
device ?= auto
only   ?=
submissions ?=
out    ?= gradebook
topics ?=
jobs   ?= 0
hidden ?=
force  ?=
cluster ?=
course ?= build/nbgrader
gradebook ?= gradebook

.PHONY: check list hint watch solution solutions-branch reset notebook test grade gradescope nbgrader report similarity stubs fingerprints bench bench-grade bench-watch bench-cluster topics clean-venv

# Installed once; reinstalled when the dependency list changes. torch is installed first,
# and only when the venv has none, so a CUDA build the user put there is kept.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "Creating $(VENV) (first run only)..."; $(PYTHON) -m venv $(VENV); }
	@$(PY) -c "import torch" 2>/dev/null || { echo "Installing $(TORCH)..."; $(PY) -m pip install -q --disable-pip-version-check $(TORCH); }
	@echo "Installing the kata suite and its test tools..."
	@$(PY) -m pip install -q --disable-pip-version-check -e .
	@touch $@

# The instructors' extra (matplotlib, copydetect, selenium: pyproject.toml's `instructor`),
# for make report, make similarity and the self-tests; a learner's venv never needs it.
$(VENV)/.installed-instructor: $(VENV)/.installed pyproject.toml
	@echo "Installing the instructor tools (matplotlib, copydetect, selenium)..."
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[instructor]'
	@touch $@

# Dask, for grading on a cluster (pyproject.toml's `cluster`): make grade cluster=... and the self-tests.
$(VENV)/.installed-cluster: $(VENV)/.installed pyproject.toml
	@echo "Installing Dask for grading on a cluster..."
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[cluster]'
	@touch $@

check: $(VENV)/.installed
	@$(PY) -m kata check "$(topic)" --impl "$(impl)" --device "$(device)" --only "$(only)"

list: $(VENV)/.installed
	@$(PY) -m kata list

hint: $(VENV)/.installed
	@$(PY) -m kata hint "$(topic)" $(if $(n),--n "$(n)")

watch: $(VENV)/.installed
	@$(PY) -m kata watch "$(topic)" --device "$(device)"

solution: $(VENV)/.installed
	@$(PY) -m kata solution "$(topic)"

solutions-branch: $(VENV)/.installed
	@$(PY) -m kata solutions-branch

reset: $(VENV)/.installed
	@$(PY) -m kata reset "$(topic)"

notebook: $(VENV)/.installed
	@$(PY) -m kata notebook "$(topic)"

# -n auto: the self-tests grade each implementation in its own process; spread them over the cores.
# --dist loadgroup: the tests sharing one graded class (xdist_group) run on one worker, so
# the class is graded once.
test: $(VENV)/.installed $(VENV)/.installed-instructor $(VENV)/.installed-cluster
	@$(PY) -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

grade: $(VENV)/.installed $(if $(cluster),$(VENV)/.installed-cluster)
	@$(PY) -m kata grade "$(submissions)" --out "$(out)" --topics "$(topics)" --jobs "$(jobs)" \
		$(if $(hidden),--hidden "$(hidden)") $(if $(force),--force) $(if $(require_sandbox),--require-sandbox) \
		$(if $(cluster),--cluster "$(cluster)")

gradescope: $(VENV)/.installed
	@$(PY) -m kata gradescope --topics "$(topics)" $(if $(hidden),--hidden "$(hidden)")

nbgrader: $(VENV)/.installed
	@$(PY) -m kata nbgrader --out "$(course)" --topics "$(topics)"

report: $(VENV)/.installed-instructor
	@$(PY) -m kata report "$(gradebook)"

similarity: $(VENV)/.installed-instructor
	@$(PY) -m kata similarity "$(submissions)" --out "$(out)" --topics "$(topics)"

stubs: $(VENV)/.installed
	@$(PY) -m kata stubs $(if $(topics),--topics $(topics))

fingerprints: $(VENV)/.installed
	@$(PY) -m tests.fingerprints $(if $(topics),--topics $(topics))

bench: $(VENV)/.installed
	@$(PY) -m pytest benchmarks -p no:cacheprovider -q --benchmark-columns=min,median,max,rounds -o testpaths=benchmarks

bench-watch: $(VENV)/.installed
	@$(PY) benchmarks/bench_watch.py $(if $(topic),--topic $(topic))

bench-cluster: $(VENV)/.installed $(VENV)/.installed-cluster
	@$(PY) benchmarks/bench_cluster.py $(if $(students),--students $(students)) $(if $(topic),--topic $(topic))

bench-grade: $(VENV)/.installed
	@$(PY) benchmarks/bench_grade.py $(if $(students),--students $(students)) $(if $(topic),--topic $(topic))

topics: $(VENV)/.installed
	@$(PY) -m kata topics

clean-venv:
	rm -rf $(VENV)
