"""Test helpers for medssl and its plugins: contract test classes and pytest fixtures.

Plugin authors reuse the contract classes (kornia style) so every backbone, objective,
augmentation policy and dataset adapter passes the same checks.
"""
