"""Language-model plugins."""
