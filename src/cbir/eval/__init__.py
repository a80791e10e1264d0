"""Retrieval metrics and evaluation protocols."""
