"""First-party plugins of dynvlm, registered through the `dynvlm` entry-point group."""
