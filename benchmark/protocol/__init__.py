"""The evaluation protocol (paper A.7): heatmap summaries, Monte-Carlo folds and metrics
(:mod:`~benchmark.protocol.evaluation`, :mod:`~benchmark.protocol.metrics`), bootstrap
statistics (:mod:`~benchmark.protocol.stats`) and the validation set as the protocol sees
it (:mod:`~benchmark.protocol.validation`).
"""
