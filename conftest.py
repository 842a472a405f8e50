"""Root pytest plugin: the graders' options and fixtures live in kata/plugin.py."""

pytest_plugins = ["kata.plugin"]
