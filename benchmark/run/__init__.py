"""A run: its classifiers and seeds through the stages (:mod:`~benchmark.run.runner`), each
classifier's heatmap work (:mod:`~benchmark.run.job`), its outputs
(:mod:`~benchmark.run.outputs`), its plan and
cost (:mod:`~benchmark.run.plan`), the heatmap cache (:mod:`~benchmark.run.cache`), the
checks made before the long work (:mod:`~benchmark.run.preflight`) and heatmaps of other
tools (:mod:`~benchmark.run.external`).
"""
