"""DETR-family detectors."""
