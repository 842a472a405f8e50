"""Reads every other student's file it can find and shows them in its own feedback."""
import glob

_found = []
for _pattern in ("__SUBMISSIONS__/*/attention/attention.py", "/tmp/kata-grade-*/submission/*/*.py"):
    for _path in glob.glob(_pattern):
        try:
            _found.append(open(_path).read())
        except OSError:
            pass
_stolen = [text for text in _found if "__MARKER__" in text]
if _stolen:
    raise RuntimeError("stolen: " + _stolen[0])
