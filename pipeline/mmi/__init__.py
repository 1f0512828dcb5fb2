"""MMI-TVR's fine-grained knowledge (Sec. 4.2-4.3, docs/mmi.md): question pools, their clusters,
demonstrations, skeletons and skeleton scores."""
