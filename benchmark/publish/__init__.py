"""What a run publishes: leaderboard tables and pages (:mod:`~benchmark.publish.leaderboard`,
:mod:`~benchmark.publish.page`, :mod:`~benchmark.publish.captions`,
:mod:`~benchmark.publish.section`), the Figure 6 layout (:mod:`~benchmark.publish.figures`)
and the files beside them (:mod:`~benchmark.publish.report`); the one path from an
evaluation's numbers to all of them that ``run`` and ``evaluate`` share
(:mod:`~benchmark.publish.pipeline`).
"""
