"""The evaluation protocol (paper A.7): heatmap summaries, Monte-Carlo folds and metrics
(:mod:`~benchmark.protocol.evaluation`, :mod:`~benchmark.protocol.metrics`), bootstrap
statistics (:mod:`~benchmark.protocol.stats`) and the one path from any heatmap source to
the folds (:mod:`~benchmark.protocol.assess`).
"""
