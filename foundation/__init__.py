"""The bottom layer that ``methods``, ``datasets`` and ``benchmark`` stand on: name
registries with close-match errors (:mod:`foundation.registry`), deferred imports
(:mod:`foundation.lazy`), atomic file writes, file locks and the cache root
(:mod:`foundation.io`) and sealed JSON (:mod:`foundation.seal`). It imports none of the
three packages above it, so that the method and dataset libraries do not depend on the
harness (``tests/test_layout.py`` checks it).
"""
