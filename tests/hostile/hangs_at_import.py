"""Loops forever while being imported: the per-student time limit must end it."""
while True:
    pass
