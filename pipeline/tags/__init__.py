"""MAC-VR tags after the model has answered and around it: cleaning answers into tags (`parse`,
Appx. C), asking an engine for them in a tag stage (`asking`), the merged view and Table 1's
statistics (`stats`), and the files MAC-VR's released code reads (`export`)."""

from pipeline.tags.parse import MAX_CHARS, STOPWORDS, first_tags, merge_votes, parse_tags, sample_tags, tag_sentence

__all__ = ["MAX_CHARS", "STOPWORDS", "first_tags", "merge_votes", "parse_tags", "sample_tags", "tag_sentence"]
