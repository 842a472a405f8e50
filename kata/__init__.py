"""The kata engine: course metadata, implementation loading, grader checks and reporting."""
