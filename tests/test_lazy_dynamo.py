"""kata.lazy_dynamo: torch's own functions stop importing torch._dynamo, and torch behaves
exactly as upstream once something imports it. In a fresh interpreter each: the point is
what gets imported."""

import subprocess
import sys
import textwrap

from kata.course import ROOT


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_meta_ops_and_optimizers_no_longer_import_dynamo():
    out = run("""
        import sys
        import torch
        from kata import lazy_dynamo
        assert lazy_dynamo.defer()
        m = torch.ones(3, 4, dtype=torch.bool, device="meta").tril(1)  # torch._refs, marked at first use
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([p], lr=0.1)  # add_param_group is marked
        opt.zero_grad()
        print(m.shape, "torch._dynamo" in sys.modules)
    """)
    assert out.split() == ["torch.Size([3,", "4])", "False"]


def test_importing_dynamo_puts_torch_back():
    out = run("""
        import sys
        import torch
        import torch._compile
        from kata import lazy_dynamo
        original = torch._compile._disable_dynamo
        assert lazy_dynamo.defer()
        assert lazy_dynamo._stood_in and torch._disable_dynamo is not original
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([p], lr=0.1)
        p.grad = torch.ones(3)
        opt.step()  # imports torch._dynamo itself (graph_break)
        assert "torch._dynamo" in sys.modules
        assert torch._disable_dynamo is original and torch._compile._disable_dynamo is original
        assert not lazy_dynamo._stood_in
        assert not any(type(f).__name__ == "_UndoBeforeDynamo" for f in sys.meta_path)
        # marked functions now build torch's real mark
        opt.zero_grad()
        wrapper = torch.optim.Optimizer.zero_grad
        fn = wrapper.__closure__[wrapper.__code__.co_freevars.index("fn")].cell_contents
        print(getattr(fn, "__dynamo_disable") is not fn, round(p[0].item(), 4))
    """)
    assert out.split() == ["True", "0.9"]
