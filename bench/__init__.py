"""Benchmarks: competitors side by side in one run, results as JSON, Markdown and PNG.

Run as `python -m bench.<name>`; each module's docstring says what it measures and how.
"""
