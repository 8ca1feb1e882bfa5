"""Compatibility layer for the current torch / numpy stack (applied on import)."""
