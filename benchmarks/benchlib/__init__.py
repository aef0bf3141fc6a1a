"""Helpers that several benchmark scripts share (not benchmarks themselves)."""
