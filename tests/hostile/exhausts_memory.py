"""Allocates far more memory than the grader allows."""
hog = []
while True:
    hog.append(bytearray(256 * 2**20))
