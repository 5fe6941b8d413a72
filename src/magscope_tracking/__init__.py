"""Bead tracking compute and services: pure NumPy/numba, no Bluesky, ophyd-async or Qt."""
