"""Class activation maps of one logit at one layer, written once, dimension-agnostic.

Each equation maps the layer's activations A [N, K, *S] and the gradients dy/dA of the
target logit y to a raw map [N, *S] (ReLU applied, no min-max scaling: values compare
across slices and volumes). The maps equal pytorch-grad-cam's before its ``scale_cam_image``
step, which the tests check. Batched, on the model's device, bf16 autocast on CUDA.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.tomography import autocast

# F.interpolate's linear mode for maps of 1, 2 and 3 spatial axes
INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


@contextmanager
def captured_output(layer: nn.Module):
    """Collect ``layer``'s forward outputs; the hook is released even if the call fails."""
    outputs: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def activations_and_gradients(
    model: nn.Module, layers: Sequence[nn.Module], inputs: Tensor, target: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """(A, dy/dA) at each of ``layers`` for y = logit ``target`` of each input, float32:
    one forward and one backward pass for all layers."""
    inputs = inputs.detach().requires_grad_(True)  # so that A is in the graph even if frozen
    with ExitStack() as stack:
        captured = [stack.enter_context(captured_output(layer)) for layer in layers]
        with torch.enable_grad(), autocast(inputs.device):
            logits = model(inputs)
            acts = [outputs[0] for outputs in captured]
            grads = torch.autograd.grad(logits[:, target].sum(), acts)
    return [(a.detach().float(), g.float()) for a, g in zip(acts, grads, strict=True)]


def _spatial_sum(x: Tensor) -> Tensor:
    """Sum over the spatial axes, kept for broadcasting: [N, K, *S] -> [N, K, 1, ...]."""
    return x.flatten(2).sum(-1).view(*x.shape[:2], *([1] * (x.dim() - 2)))


def multi_cam(
    model: nn.Module, requests: dict[Hashable, tuple[CAM, nn.Module]], batch_size: int
) -> Callable[[Tensor], dict[Hashable, Tensor]]:
    """A slice function [N, C, h, w] -> {key: maps [N, a, b]} for ``requests`` {key: (cam,
    layer)}, ``batch_size`` slices at a time. Gradient CAMs share one forward and one
    backward pass per batch, whatever their equations and layers."""
    shared = {k: r for k, r in requests.items() if isinstance(r[0], GradientCAM)}
    layers = list(dict.fromkeys(layer for _, layer in shared.values()))

    def maps(slices: Tensor) -> dict[Hashable, Tensor]:
        parts: dict[Hashable, list[Tensor]] = {key: [] for key in requests}
        for batch in slices.split(batch_size):
            if shared:
                found = activations_and_gradients(model, layers, batch)
                pairs = dict(zip(layers, found, strict=True))
                for key, (cam, layer) in shared.items():
                    parts[key].append(cam.channel_map(*pairs[layer]).clamp(min=0))
            for key, (cam, layer) in requests.items():
                if key not in shared:
                    parts[key].append(cam(model, layer, batch))
        return {key: torch.cat(chunks) for key, chunks in parts.items()}

    return maps


class CAM(ABC):
    """A CAM: ``cam(model, layer, inputs) -> maps [N, *S]`` at the layer's resolution."""

    @abstractmethod
    def __call__(self, model: nn.Module, layer: nn.Module, inputs: Tensor) -> Tensor:
        """Raw maps of logit 0 for ``inputs`` [N, C, *S_in] at ``layer``."""


class GradientCAM(CAM):
    """A CAM computed from A and dy/dA alone; subclasses state the equation."""

    def __call__(self, model: nn.Module, layer: nn.Module, inputs: Tensor) -> Tensor:
        ((acts, grads),) = activations_and_gradients(model, [layer], inputs)
        return self.channel_map(acts, grads).clamp(min=0)

    @abstractmethod
    def channel_map(self, acts: Tensor, grads: Tensor) -> Tensor:
        """[N, K, *S] activations and gradients -> [N, *S] map, before the ReLU."""


class ChannelWeightedCAM(GradientCAM):
    """sum_k w_k A_k with one weight per channel (GradCAM, GradCAM++)."""

    def channel_map(self, acts: Tensor, grads: Tensor) -> Tensor:
        weights = self.weights(acts, grads)
        return (weights.view(*weights.shape, *([1] * (acts.dim() - 2))) * acts).sum(1)

    @abstractmethod
    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        """[N, K] channel weights."""


class GradCAM(ChannelWeightedCAM):
    """GradCAM (Selvaraju et al., ICCV 2017): w_k = spatial mean of dy/dA_k."""

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return grads.flatten(2).mean(-1)


class GradCAMPlusPlus(ChannelWeightedCAM):
    """GradCAM++ (Chattopadhyay et al., WACV 2018, eq. 19 with exp(y) second derivatives)."""

    eps = 1e-6  # as pytorch-grad-cam

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        g2 = grads**2
        alpha = g2 / (2 * g2 + _spatial_sum(acts) * g2 * grads + self.eps)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (grads.clamp(min=0) * alpha).flatten(2).sum(-1)


class LayerCAM(GradientCAM):
    """LayerCAM (Jiang et al., TIP 2021): sum_k relu(dy/dA_k) * A_k, per location."""

    def channel_map(self, acts: Tensor, grads: Tensor) -> Tensor:
        return (grads.clamp(min=0) * acts).sum(1)


class ScoreCAM(CAM):
    """ScoreCAM (Wang et al., CVPRW 2020), gradient-free: channel weights are the softmax
    over channels of the logit of the input masked by each min-max scaled, upsampled A_k
    (bilinearly as pytorch-grad-cam's for images, trilinearly for volumes).

    The masked copies of each input go through the classifier as many at a time as the
    inputs it was given (the caller's batch size bounds the memory of both)."""

    def __call__(self, model: nn.Module, layer: nn.Module, inputs: Tensor) -> Tensor:
        with torch.no_grad(), autocast(inputs.device):
            with captured_output(layer) as outputs:
                model(inputs)
            acts = outputs[0].float()
            pairs = zip(inputs, acts, strict=True)
            scores = torch.stack([self._scores(model, x, a, len(inputs)) for x, a in pairs])
        weights = scores.softmax(-1).view(*scores.shape, *([1] * (acts.dim() - 2)))
        return (weights * acts).sum(1).clamp(min=0)

    @staticmethod
    def _scores(model: nn.Module, image: Tensor, acts: Tensor, batch_size: int) -> Tensor:
        """[K] logits of ``image`` [C, *S_in] masked by each channel of ``acts`` [K, *S]."""
        mode = INTERPOLATION[acts.dim() - 1]
        masks = F.interpolate(acts[None], size=image.shape[1:], mode=mode, align_corners=True)
        masks = masks[0].flatten(1)
        low, high = masks.amin(-1, keepdim=True), masks.amax(-1, keepdim=True)
        masks = ((masks - low) / (high - low + 1e-8)).view(len(acts), 1, *image.shape[1:])
        logits = [model(image * m)[:, 0] for m in masks.split(batch_size)]
        return torch.cat(logits).float()


class PytorchGradCAM(CAM):
    """Any pytorch-grad-cam class by name (EigenCAM, HiResCAM, XGradCAM, ...), raw maps:
    its own ``get_cam_image`` and ReLU, without its min-max scaling and resizing."""

    def __init__(self, class_name: str):
        import pytorch_grad_cam

        if not hasattr(pytorch_grad_cam, class_name):
            raise ValueError(f"pytorch-grad-cam has no class {class_name!r}")
        self.cls = getattr(pytorch_grad_cam, class_name)

    def __call__(self, model: nn.Module, layer: nn.Module, inputs: Tensor) -> Tensor:
        cam = self.cls(model=model, target_layers=[layer])
        try:
            if cam.uses_gradients:
                ((acts, grads),) = activations_and_gradients(model, [layer], inputs)
            else:
                with torch.no_grad(), captured_output(layer) as outputs, autocast(inputs.device):
                    model(inputs)
                acts, grads = outputs[0].float(), None
            acts_np = acts.cpu().numpy()
            grads_np = None if grads is None else grads.cpu().numpy()
            raw = cam.get_cam_image(inputs, layer, None, acts_np, grads_np, False)
        finally:
            cam.activations_and_grads.release()
        return torch.from_numpy(raw).to(inputs.device).float().clamp(min=0)
