"""The evaluation layer: one trained model on a benchmark file (:mod:`.evaluate`, ``dynvlm eval``)
and at every point of a grid without training (:mod:`.transfer`). The lmms-eval bridge is
:mod:`dynvlm.lmms`, on the same layer."""
