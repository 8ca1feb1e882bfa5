"""Backbones. Each family lives in one file; importing it registers the class."""
