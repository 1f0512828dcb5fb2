"""Running one stage: the stage contract (`stage`), the runner that versions, shards, leases and
commits it (`runner`), and what runs inside Ray for it (`workers`). Knows no particular stage."""
