"""Serving stage: the exported SavedModel and its signatures."""
