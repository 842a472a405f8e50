"""Placeholder: being written."""


def todo():
    raise NotImplementedError("sampling.todo")
