"""What crosses between judge and executor (kata.wire, kata.judge.Remote): tensors keep what
graders test (strides, offsets, Parameters, gradients), and a method or module function
is one request, looked up when it is used."""

from __future__ import annotations

import textwrap

import pytest
import torch

from kata import wire
from kata.executor import Server
from kata.judge import Executor


def tensors():
    p = torch.nn.Parameter(torch.randn(2, 3))
    p.grad = torch.ones(2, 3)
    base = torch.randn(6)
    return {
        "contiguous": torch.randn(3, 4, 5),
        "parameter_with_grad": p,
        "strided_slice": torch.randn(4, 6)[:, ::2],
        "transposed": torch.randn(5, 3).t(),
        "offset_view": torch.arange(10)[2:],
        "view_of_whole_storage": base.view(2, 3),
        "requires_grad": torch.randn(3, requires_grad=True),
        "empty": torch.empty(0, 3),
        "half": torch.randn(3).half(),
        "bfloat16": torch.randn(2, 2).bfloat16(),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5),
        "complex": torch.randn(2, dtype=torch.complex64),
        "transposed_parameter": torch.nn.Parameter(torch.randn(3, 2).t()),
    }


@pytest.mark.parametrize("name", list(tensors()))
def test_request_tensors_arrive_as_they_were_sent(name):
    t = tensors()[name]
    request, received, _ = wire.loads_request(wire.dumps_request({"x": t})[0], None, None)
    got = request["x"]
    assert received == [got]
    assert type(got) is type(t) and got.dtype == t.dtype and got.shape == t.shape
    # Non-contiguous and offset inputs are what some checks exist for: they must stay so.
    assert got.stride() == t.stride() and got.storage_offset() == t.storage_offset()
    assert got.untyped_storage().nbytes() == t.untyped_storage().nbytes()
    assert torch.equal(got.detach(), t.detach()) and got.requires_grad == t.requires_grad
    assert (got.grad is None) == (t.grad is None)
    if t.grad is not None:
        assert torch.equal(got.grad, t.grad)


@pytest.fixture
def learner(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(textwrap.dedent("""
        import torch

        SCALE = 3

        def double(x):
            return 2 * x

        class Box:
            def __init__(self):
                self.size = 4

            def grow(self, n):
                self.size += n
                return self.size

        class Sneaky:
            def __getattribute__(self, name):
                return lambda *a: "sneaky"
    """))
    ex = Executor(forbidden=(), device="cpu", local=Server())
    return ex, ex.load(path)


def test_a_module_function_or_class_is_called_in_one_request(learner):
    ex, mod = learner
    before = ex.rid
    assert torch.equal(mod.double(torch.ones(2)), torch.full((2,), 2.0))
    box = mod.Box()
    assert ex.rid - before == 2  # two calls; reading mod.double and mod.Box asked nothing
    assert mod.Box.kata_type == "Box" and mod.Box.kata_mro[-1] == "builtins.object"
    assert mod.SCALE == 3  # a value is read, with a request
    assert ex.rid - before == 3
    before = ex.rid
    assert box.grow(2) == 6 and box.grow(1) == 7
    assert ex.rid - before == 2  # one request per method call
    assert box.size == 7


def test_a_method_is_looked_up_when_it_is_called(learner):
    ex, mod = learner
    box = mod.Box()
    grow = box.grow
    box.grow = mod.double  # an instance attribute now shadows the method, as in Python
    assert grow(5) == 10


def test_a_class_with_its_own_attribute_lookup_is_always_asked(learner):
    ex, mod = learner
    sneaky = mod.Sneaky()
    before = ex.rid
    assert sneaky.anything() == "sneaky"
    assert ex.rid - before == 2  # the read, then the call


def test_a_missing_function_is_an_attribute_error(learner):
    ex, mod = learner
    with pytest.raises(AttributeError):
        mod.not_there(1)
