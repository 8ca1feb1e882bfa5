"""Datasets and the embedded demo data generator."""
