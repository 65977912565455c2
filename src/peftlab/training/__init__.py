"""ONE training loop for every method (loop.py: named phases as litgpt's fit/validate),
with what it stands on: checkpoints and the trainable state, evaluation batches, precision,
threads, dropout, the frozen-layer cache, process groups, progress and resources.

Imports the core, data/ and models/; it knows nothing of methods or tasks (a method is
whatever parameters require grad; a task hands the loop its loss and scores).
"""
