"""The running layer: ``dynvlm fit / validate / test`` (:mod:`.train`) and ``dynvlm run`` over a
sweep's grid (:mod:`.sweep`, results tables and plots in :mod:`.results`)."""
