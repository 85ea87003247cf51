"""Prompt-format plugins: how a conversation with visual content is written before tokenising."""
