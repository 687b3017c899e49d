"""Heatmap methods on one shared tomography core (``methods.tomography``).

Importing this package is cheap: torch and the built-in adapters load on first use.
"""

from methods.registry import (
    METHODS,
    Method,
    Passes,
    create_method,
    expand_specs,
    list_methods,
    method_class,
    parse_spec,
    register_method,
    spec_tokens,
)

__all__ = [
    "METHODS",
    "Method",
    "Passes",
    "create_method",
    "expand_specs",
    "list_methods",
    "method_class",
    "parse_spec",
    "register_method",
    "spec_tokens",
]
