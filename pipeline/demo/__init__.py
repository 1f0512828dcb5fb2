"""`tvr demo`: the whole pipeline end to end on a small generated dataset with tiny local models
(`end_to_end.run_demo`), and the synthetic videos it and the tests are made of (`synth`)."""
