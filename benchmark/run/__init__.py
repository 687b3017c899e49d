"""A run: its stages from classifiers to pages (:mod:`~benchmark.run.runner`), its plan and
cost (:mod:`~benchmark.run.plan`), the heatmap cache (:mod:`~benchmark.run.cache`), the
checks made before the long work (:mod:`~benchmark.run.preflight`) and heatmaps of other
tools (:mod:`~benchmark.run.external`).
"""
