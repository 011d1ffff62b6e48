"""Evaluation stage: EmbeddingEvaluator, embedding metrics, Projector files and the report."""
