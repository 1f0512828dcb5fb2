"""Models used by the stages, each loaded once per worker.

- `pipeline.models.clip`: CLIP image and text encoders (`ClipVision`, `ClipText`), the embedding
  width from a config alone (`embedding_dim`, `text_width`), `decode_jpeg`; `identity.checkpoint_identity`.
- `pipeline.models.question_embeddings`: `mean_word_embeddings` (MMI Eq. 5's question vectors from a
  checkpoint's input embeddings, no forward pass) and `sentence_embeddings` (sentence-transformers).
- `pipeline.models.tiny`: `build_tiny_clip`, a tiny random CLIP checkpoint built offline for tests;
  `tiny_lm`: `build_tiny_lm`, `build_tiny_vlm`, the tiny generation models of the demo and the tests.

Nothing is imported here: torch and transformers take seconds to import, and a driver that only
plans work should not pay for them.
"""
