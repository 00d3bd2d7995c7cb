"""Evaluation as a library: what an evaluation needs and computes, apart from the verbs that run it."""
