"""The top layer: the ``dynvlm`` command (:mod:`.main`) and the ``lightning`` command (:mod:`.lightning`).

Kept free of imports: the ``lightning`` console script hands foreign commands on without
importing torch."""
