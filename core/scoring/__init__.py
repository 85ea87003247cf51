"""Scoring answers: a model's output -> an option (:mod:`.answers`) and the per-question records
and accuracies of a test pass (:mod:`.records`).

It sits below the model layer: the model's validation and test steps hand their samples to it,
and it reaches the model only through the :class:`~dynvlm.scoring.records.Answerer` protocol.
"""
