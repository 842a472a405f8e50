"""Placeholder: being written."""


def todo():
    # BEGIN SOLUTION
    pass
    # END SOLUTION
