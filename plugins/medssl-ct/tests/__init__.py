"""The medssl-ct plugin's tests (a package, so its conftest is not the `conftest` module
that medssl's tests/data imports from)."""
