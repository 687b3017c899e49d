"""ToNNO benchmark harness: ``python -m benchmark --help``.

Importing this package is cheap (no torch): commands import what they need when run.
"""

__version__ = "0.1.0"
