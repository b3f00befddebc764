"""Simulacra: world models on one machine — record, train, play, plan, dream, evaluate."""

__version__ = "0.1.0"
