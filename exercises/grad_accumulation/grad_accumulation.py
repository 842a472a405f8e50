"""Placeholder: being written."""


def todo():
    raise NotImplementedError("grad_accumulation.todo")
