"""Scoring answers: a model's output -> an option (:mod:`.answers`; a benchmark's question as its
lmms-eval task reads it, :mod:`.benchmarks` on the rules of :mod:`.readers`) and the per-question
records and accuracies of a test pass (:mod:`.records`).

It sits below the model layer: the model's validation and test steps hand their samples to it,
and it reaches the model only through the :class:`~dynvlm.scoring.records.Answerer` protocol.
"""
