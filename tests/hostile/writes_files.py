"""Writes files where it runs and into its home folder while being imported (the test
puts every hostile file inside a correct solution, so this one would otherwise pass)."""
import os
from pathlib import Path

Path("owned.txt").write_text("the grader's folder is mine")
Path(os.path.expanduser("~"), ".bashrc").write_text("echo owned")
