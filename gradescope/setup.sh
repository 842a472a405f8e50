#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder image (Ubuntu). It installs
# Python 3.11, a CPU build of torch and the kata suite into /autograder/venv.
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv
python3.11 -m venv /autograder/venv
/autograder/venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
/autograder/venv/bin/pip install --no-cache-dir -e /autograder/source
