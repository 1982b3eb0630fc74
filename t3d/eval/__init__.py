"""Evaluation: the eval job, grading, AUP and the code sandbox."""
