"""Benchmarks of ablate's training step, input pipeline and study loop (see benchmarks/README.md)."""
