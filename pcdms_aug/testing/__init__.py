"""Helpers that build local test inputs (random-weight model folders in the downloaded layouts)."""
