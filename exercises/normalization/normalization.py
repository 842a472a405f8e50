"""Placeholder: being written."""


def todo():
    raise NotImplementedError("normalization.todo")
