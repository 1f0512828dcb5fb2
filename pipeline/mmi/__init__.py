"""MMI-TVR's fine-grained knowledge (Sec. 4.2-4.3, docs/mmi.md): question pools, their clusters,
demonstrations, skeletons and skeleton scores.

    pool = load_pool("mmi_text_questions")                 # prompts/mmi_text_questions.txt
    clusters = cluster_questions(embeddings, k=None)       # question indices per cluster, nearest first
    chosen = select_demonstration(candidates, DEFAULT_ANSWER_TERMS)   # Eq. 7
    parse_probability("Probability: 0.85")                 # Eq. 9's answer -> 0.85
"""

from pipeline.mmi.clusters import Clustering, cluster_questions, fit_clusters
from pipeline.mmi.demonstrations import DEFAULT_ANSWER_TERMS, count_answer_terms, select_demonstration
from pipeline.mmi.pools import PoolError, QuestionPool, list_pools, load_pool
from pipeline.mmi.probability import parse_probability

__all__ = ["Clustering", "cluster_questions", "fit_clusters", "DEFAULT_ANSWER_TERMS", "count_answer_terms",
           "select_demonstration", "PoolError", "QuestionPool", "list_pools", "load_pool", "parse_probability"]
