"""Compact training module: shard data, retrieval heads, inference strategies, metrics and one loop.

Importing this package loads nothing heavy; import the submodules (`pipeline.train.metrics`,
`pipeline.train.inference`, ...) for what they hold. Conventions follow /work/shared/REFERENCE.md.
"""
