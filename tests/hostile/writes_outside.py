"""Writes a file by absolute path outside the folder it runs in, and starts a shell."""
import os

with open("/tmp/kata-hostile-owned.txt", "w") as f:
    f.write("written by a submission")
os.system("touch /tmp/kata-hostile-owned-by-shell.txt")
