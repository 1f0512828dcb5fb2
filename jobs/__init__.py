"""Thin Ray job entrypoints; the work lives in the `pipeline` library."""
