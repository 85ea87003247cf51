"""Placeholder: this plugin module is being written (registers nothing yet)."""
