"""Sub-commands of ``python -m benchmark`` (see ``benchmark.cli``)."""
