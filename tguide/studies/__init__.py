"""Reproductions of the seed papers. Each sub-package uses the library; none imports another."""
