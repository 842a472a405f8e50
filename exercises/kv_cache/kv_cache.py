"""Placeholder: being written."""


def todo():
    raise NotImplementedError("kv_cache.todo")
