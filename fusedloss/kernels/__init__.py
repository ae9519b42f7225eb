"""Triton code: the engine (``engine``), shared math helpers (``mathlib``) and each family's math."""
