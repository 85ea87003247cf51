"""Budget policy plugins: a sample's decoded frames -> which to keep and the tokens per frame (see :mod:`dynvlm.budget`)."""
