"""The method registry: ``register_method``, ``create_method``, ``list_methods``.

A spec names one configured method: ``NAME`` or ``NAME@LAYER`` for layer-wise methods
(LAYER 1-4 = the classifier's ResNet stages).
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from foundation.registry import Registry, RegistryError, natural_key
from methods.config import TomographyConfig

if TYPE_CHECKING:
    from torch import Tensor, nn

# Modules that register the built-in methods; imported on the first registry query.
BUILTIN_MODULES = (
    "methods.tonno",
    "methods.cam_methods",
    "methods.iterative",
    "methods.cam3d",
    "methods.baselines",
)

METHODS = Registry("method", BUILTIN_MODULES)


@dataclass(frozen=True)
class Passes:
    """The work of one method on one volume, in the plan's units of cost.

    ``forward``: slices pushed through the 2D slice classifier (all of them); ``backward``:
    those of them also back-propagated (gradient CAMs); ``cut``: slices cut from the volume
    (eq. 4); ``backprojected``: voxel x direction reads of the backprojection (eqs. 11-13),
    or pixel reads and writes of an iterative solver (each cut of a slice and its adjoint);
    ``volume_forward`` / ``volume_backward``: whole volumes pushed through the 3D volume
    classifier, and those of them back-propagated (the 3D CAMs, ``classifier = "3d"``).
    """

    forward: int
    backward: int = 0
    cut: int = 0
    backprojected: int = 0
    volume_forward: int = 0
    volume_backward: int = 0

    def __add__(self, other: Passes) -> Passes:
        return Passes(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def __mul__(self, factor: int) -> Passes:
        return Passes(*(a * factor for a in self.astuple()))

    def astuple(self) -> tuple[int, ...]:
        return astuple(self)


# Kinds of methods in the paper's row order (Tables 2 and 5): slice-wise CAMs (and their
# 3-axis variants), ToNNO, Averaged CAM, Tomographic CAM; then ours (iterative, the 3D CAMs
# of a volume classifier), plugins, baselines.
KINDS = ("slice-wise", "tonno", "averaged", "tomographic", "iterative", "3d", "plugin", "baseline")


class Method(ABC):
    """A heatmap method: ``method(volume[C,D,H,W], model) -> heatmap[D,H,W]``.

    The heatmap is float32, has the volume's spatial shape and holds raw values (no
    per-slice min-max): the evaluation thresholds compare values across slices and volumes.

    What the tables show is declared with :func:`register_method`: ``title`` (the row
    label, e.g. "Tomographic LayerCAM"), ``paper`` (its (method, variant) in the paper's
    published tables, if the paper reports it); ``kind`` (one of :data:`KINDS`, the row
    order) is a class attribute of the kind's base class.

    ``classifier`` names the model the method explains, which the run passes as ``model``:
    ``"2d"`` the slice classifier (the paper's methods), ``"3d"`` the volume classifier
    (a 3D network on the whole volume [N, C, D, H, W] -> logits [N, 1], with timm-style
    ``feature_info`` stages; beyond the paper).
    """

    name: ClassVar[str] = ""
    layers: ClassVar[tuple[int, ...]] = ()
    title: ClassVar[str] = ""
    paper: ClassVar[tuple[str, str] | None] = None
    kind: ClassVar[str] = "plugin"
    classifier: ClassVar[str] = "2d"  # "2d": the slice classifier; "3d": the volume one
    # Bump when the method's heatmaps change with nothing in the cache key changing (its
    # code, not its settings): a non-zero revision is part of its entries' cache address,
    # so the old entries are not reused (0 keeps the addresses they always had).
    revision: ClassVar[int] = 0

    def __init__(
        self,
        layer: int | None = None,
        config: TomographyConfig | None = None,
        batch_size: int = 64,
    ):
        self.layer = layer
        self.config = config or TomographyConfig()  # slice size, angles, slices, chunk, seed
        self.batch_size = batch_size  # slices per forward pass of the classifier

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.layer}" if self.layer is not None else self.name

    @abstractmethod
    def __call__(self, volume: Tensor, model: nn.Module) -> Tensor:
        """Heatmap [D,H,W] of ``volume`` [C,D,H,W] explained through ``model``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def passes(self, shape: tuple[int, int, int], channels: int | None = None) -> Passes | None:
        """The work of this method on one volume of ``shape`` (D, H, W): slices through the
        slice classifier, or volumes through the volume classifier; ``channels``: the
        channel count at its layer (ScoreCAM needs it).

        None = unknown cost: the run plan shows it as unknown and never leaves it out.
        Built-in methods override this with their closed form; a plugin may too.
        """
        return None

    @classmethod
    def fit_options(cls, dataset: Any) -> dict[str, Any]:
        """Options fitted to ``dataset`` (a :class:`datasets.VolumeDataset`: its class
        attributes and training split, never the validation split), which the run passes
        to the constructor; JSON values, part of the heatmap cache address. Default: none.
        """
        return {}

    @property
    def pass_group(self) -> Hashable | None:
        """Methods with equal non-None groups share one classifier pass when computed
        together (:func:`methods.heatmaps.compute_heatmaps`); None: no sharing."""
        return None


def register_method(
    name: str,
    layers: Sequence[int] = (),
    *,
    title: str | None = None,
    paper: tuple[str, str] | None = None,
) -> Callable[[type], type]:
    """Class decorator registering a :class:`Method` subclass under ``name``.

    ``layers`` lists the classifier stages a layer-wise method accepts (``NAME@LAYER``);
    ``title`` is its row label in the tables (default: ``name``); ``paper`` its
    ``(method, variant)`` in the paper's published tables, when the paper reports it.
    """
    add = METHODS.register(name, layers=tuple(layers))

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) expects a Method subclass, got {cls!r}")
        if cls.kind not in KINDS:
            raise TypeError(f"{cls.__qualname__}.kind = {cls.kind!r} is not one of {KINDS}")
        cls.name, cls.layers, cls.title, cls.paper = name, tuple(layers), title or name, paper
        return add(cls)

    return decorator


@dataclass(frozen=True)
class MethodName:
    """A method spec as the tables show it: ``tomographic_layercam@3``."""

    family: str  # the spec without its layer: the registered name
    layer: int | None
    title: str  # "Tomographic LayerCAM": the registered title (the family if unregistered)
    kind: str  # one of KINDS ("" if unregistered)
    order: tuple[int, int, str]  # (kind, registration, family): the paper's row order

    @property
    def display(self) -> str:
        """``"LayerCAM ★ (layer 2)"``: the row label."""
        return f"{self.title} (layer {self.layer})" if self.layer is not None else self.title


def method_name(spec: str) -> MethodName:
    """``NAME[@LAYER]`` read through the registry; a name no longer (or not yet) registered,
    e.g. a plugin's row on a merged page, keeps its name and sorts after the registered
    plugins, before the baselines."""
    family, _, text = spec.partition("@")
    layer = int(text) if text.isdigit() else None
    if family not in METHODS:
        return MethodName(family, layer, family, "", (KINDS.index("plugin"), len(METHODS), family))
    cls = METHODS.entry(family).obj
    order = (KINDS.index(cls.kind), METHODS.position(family), family)
    return MethodName(family, layer, cls.title, cls.kind, order)


def paper_families() -> dict[tuple[str, str], str]:
    """{(method, variant) of the paper's published tables: registered name}."""
    return {
        cls.paper: name
        for name in METHODS.names()
        if (cls := METHODS.entry(name).obj).paper is not None
    }


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"layercam@2" -> ("layercam", 2)``; checks the layer against the registry."""
    name, _, layer_text = spec.strip().partition("@")
    layers = METHODS.entry(name).meta["layers"]
    if not layer_text:
        if layers:
            choices = ", ".join(f"{name}@{k}" for k in layers)
            raise RegistryError(f"method {name!r} needs a layer: one of {choices}")
        return name, None
    if not layers:
        raise RegistryError(f"method {name!r} takes no layer, got {spec!r}")
    if not layer_text.isdigit() or int(layer_text) not in layers:
        raise RegistryError(f"method {name!r} has layers {list(layers)}, got {spec!r}")
    return name, int(layer_text)


def method_class(spec: str) -> type[Method]:
    """The class registered under the name of ``spec`` (``NAME`` or ``NAME@LAYER``)."""
    return METHODS.entry(parse_spec(spec)[0]).obj


def create_method(spec: str, **options: Any) -> Method:
    """Build the method named by ``spec`` (``NAME`` or ``NAME@LAYER``) with ``options``."""
    name, layer = parse_spec(spec)
    cls = METHODS.entry(name).obj
    return cls(layer=layer, **options) if layer is not None else cls(**options)


def list_methods(pattern: str | Iterable[str] = "*", *, specs: bool = False) -> list[str]:
    """Registered method names matching fnmatch ``pattern(s)``, naturally sorted.

    With ``specs=True`` every layer-wise method expands to ``NAME@1`` ... ``NAME@4``.
    """
    names = METHODS.names(pattern)
    if not specs:
        return names
    expanded = [
        f"{n}@{k}" if k is not None else n
        for n in names
        for k in (METHODS.entry(n).meta["layers"] or (None,))
    ]
    return sorted(expanded, key=natural_key)


def spec_tokens(methods: str | Iterable[str]) -> list[str]:
    """``--methods`` items to tokens: split at commas, stripped and lower-cased, as the
    registered names are (``ToNNO,LayerCAM@2`` -> ``tonno``, ``layercam@2``)."""
    items = [methods] if isinstance(methods, str) else list(methods)
    return [t.strip().lower() for item in items for t in item.split(",") if t.strip()]


def expand_specs(requested: str | Iterable[str]) -> list[str]:
    """CLI ``--methods`` to specs: ``all``, wildcards, names (every layer) and exact specs,
    in any case.

    Order is preserved and duplicates dropped; an unknown name raises with suggestions.
    """
    out: list[str] = []
    for token in spec_tokens(requested):
        if token == "all":
            found = list_methods("*", specs=True)
        elif any(c in token for c in "*?["):
            if "@" in token:  # match whole specs, e.g. "*cam@2"
                found = [s for s in list_methods(specs=True) if fnmatch.fnmatchcase(s, token)]
            else:
                found = list_methods(token, specs=True)
            if not found:
                raise METHODS.no_match(token)
        elif "@" in token:
            name, layer = parse_spec(token)
            found = [f"{name}@{layer}" if layer is not None else name]
        else:
            METHODS.entry(token)  # raises with suggestions when unknown
            found = list_methods(token, specs=True)
        out += [s for s in found if s not in out]
    return out
