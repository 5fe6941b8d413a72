"""Bluesky plans for magnetic-tweezers experiments and the analysis they need."""
