"""Keep torch._dynamo out of gradings that never compile.

torch marks some of its own functions "not to be traced by torch.compile" with
torch._compile._disable_dynamo, whose wrapper imports torch._dynamo the first time a marked
function runs, only to build that mark. Among them: Optimizer.__init__ (through
add_param_group), Optimizer.zero_grad, and every meta-device op that torch._refs implements.
On the 2-core CI machine that import takes 0.9 s, as long as `import torch` itself, and a
cold `make check` paid it in the judge and again in the executor (attention's meta-device
check, grad_accumulation's first optimizer).

Until torch._dynamo is imported nothing can be compiled, so the mark changes nothing: `defer()`
gives each marked function itself as its mark, so the wrapper calls it directly. The moment
anything imports torch._dynamo (a learner who tries torch.compile), every stand-in is removed
before the import runs, and from then on torch behaves exactly as upstream.

If torch changes how it marks, `defer()` finds nothing it recognises and changes nothing:
gradings are then only slower, never different.
"""

from __future__ import annotations

import functools
import gc
import sys
import types

_MARK = "__dynamo_disable"  # the attribute torch._compile caches the mark in
_stood_in: list = []  # the functions given themselves as their mark
_originals: dict = {}  # where the decorator was replaced: (module, name) -> original


def defer() -> bool:
    """Install the stand-ins (see the module docstring); False where nothing was deferred."""
    import torch
    import torch._compile

    if "torch._dynamo" in sys.modules or _originals:
        return False
    decorator = torch._compile._disable_dynamo
    probe = decorator(lambda: None)
    wrapper = probe.__code__
    # The wrapper torch builds must read the mark we set, by this name, from the function it
    # closes over as `fn` (not its __wrapped__: torch._refs re-wraps some wrappers).
    if _MARK not in wrapper.co_consts or "fn" not in wrapper.co_freevars:
        return False
    cell = wrapper.co_freevars.index("fn")
    for obj in gc.get_objects():
        if type(obj) is types.FunctionType and obj.__code__ is wrapper:
            _stand_in(obj.__closure__[cell].cell_contents)

    # Functions torch marks later (torch._refs is imported at the first meta-device op).
    @functools.wraps(decorator)
    def deferring(fn=None, recursive=True):
        if fn is None:  # @_disable_dynamo(recursive=False)
            return functools.partial(deferring, recursive=recursive)
        _stand_in(fn)
        return decorator(fn, recursive)

    for module, name in ((torch._compile, "_disable_dynamo"), (torch, "_disable_dynamo")):
        if getattr(module, name, None) is decorator:
            _originals[module, name] = decorator
            setattr(module, name, deferring)
    sys.meta_path.insert(0, _UndoBeforeDynamo())
    return True


def _stand_in(fn) -> None:
    if getattr(fn, _MARK, None) is None:
        try:
            setattr(fn, _MARK, fn)
        except (AttributeError, TypeError):  # no __dict__: torch's wrapper could not mark it either
            return
        _stood_in.append(fn)


def undo() -> None:
    """Remove every stand-in and put torch's decorator back."""
    for (module, name), original in _originals.items():
        setattr(module, name, original)
    _originals.clear()
    for fn in _stood_in:
        if getattr(fn, _MARK, None) is fn:
            delattr(fn, _MARK)
    _stood_in.clear()
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _UndoBeforeDynamo)]


class _UndoBeforeDynamo:
    """A meta path finder that finds nothing: it only sees torch._dynamo's import coming."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch._dynamo":
            undo()
        return None
