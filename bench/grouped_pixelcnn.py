"""Train several independent PixelCNN++ models of the same architecture at once.

The book trains one inversion model per (layer, classifier checkpoint); §5.3 alone needs 4 layers x 5
checkpoints x 2 regimes. Models of one architecture (same image and context shapes) can share every
kernel launch: their weights are stacked along a new leading axis and the model is run under
``torch.func.vmap``, which turns each convolution into one grouped convolution over all K models.
Each model keeps its own weights, optimiser state, dropout noise and context; they share only the
order of training images. Adam acts elementwise, so one Adam over the stacked weights is K independent
Adams. Gains come where single small models leave the device idle (GPU kernel-launch overhead);
bench/pixelcnn_group.py measures them. The library does not use this (only bench/ does), so it lives here.

    group = PixelCNNGroup([PixelCNNpp(...) for _ in range(K)])
    train_pixelcnn_group(group, images, contexts, workdir, config)  # contexts: [N, K, *context_shape]
    models = group.unstack()                                         # K ordinary PixelCNNpp
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from inversion.models.pixelcnn import PixelCNNConfig, PixelCNNpp
from inversion.training import TrainConfig, TrainResult, fit


class PixelCNNGroup(nn.Module):
    def __init__(self, models: list[PixelCNNpp]):
        super().__init__()
        if not models:
            raise ValueError("a group needs at least one model")
        config = models[0].config
        for i, m in enumerate(models):
            if m.config != config:
                raise ValueError(f"model {i} differs from model 0 in its config; a group needs one architecture "
                                 f"(got {m.config} vs {config})")
        self.config = config
        self.k = len(models)
        params, _ = stack_module_state(models)
        # nn.Module attribute names cannot contain dots; keep the original names alongside.
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.names])
        # A weightless copy to run with the stacked weights; in a list to keep it out of .parameters().
        self._template = [_SubPixelLogProb(copy.deepcopy(models[0]).to("meta"))]

    @property
    def template(self) -> PixelCNNpp:
        return self._template[0].model

    def _params(self):
        return {"model." + n: p for n, p in zip(self.names, self.stacked)}

    def sub_pixel_log_prob(self, x, contexts=None):
        """Per-sub-pixel log-probs of the same images under every model: [K, N, C, H, W].

        x: uint8 [N, C, H, W], checked once here; contexts: [N, K, *context_shape] (model k sees
        contexts[:, k]) or None for unconditional models.
        """
        t = self.template
        t.train(self.training)
        device, dtype = self.stacked[0].device, self.stacked[0].dtype
        x = t.check_images(x).to(device)
        if contexts is not None:
            if contexts.dim() < 2 or contexts.shape[1] != self.k:
                raise ValueError(f"contexts must be [N, {self.k}, *context_shape] (one per model), got {list(contexts.shape)}")
            for k in range(self.k):
                t.check_context(contexts[:, k], len(x))
            contexts = contexts.to(device, dtype).movedim(1, 0)
        elif t.context_shape is not None:
            t.check_context(None, len(x))  # raises: these models need contexts

        def run(params, ctx):
            return functional_call(self._template[0], params, (x, ctx))

        return vmap(run, in_dims=(0, None if contexts is None else 0), randomness="different")(self._params(), contexts)

    @torch.no_grad()
    def data_init(self, x, contexts=None):
        """Weight norm's data-dependent init, model by model (it cannot run under vmap)."""
        models = self.unstack()
        for k, m in enumerate(models):
            m.data_init(x, None if contexts is None else contexts[:, k])
        params, _ = stack_module_state(models)
        for n, p in zip(self.names, self.stacked):
            p.copy_(params[n])

    def unstack(self) -> list[PixelCNNpp]:
        """The K models as ordinary PixelCNNpp modules (copies of the current weights)."""
        device = self.stacked[0].device
        models = []
        for k in range(self.k):
            m = PixelCNNpp(**self.config).to(device=device, dtype=self.stacked[0].dtype)
            m.load_state_dict({n: p[k].detach().clone() for n, p in zip(self.names, self.stacked)})
            m.train(self.training)
            models.append(m)
        return models


class _SubPixelLogProb(nn.Module):
    """functional_call runs a module's forward; this one's forward is the model's likelihood."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, context):
        return self.model.sub_pixel_log_prob(x, context)


def train_pixelcnn_group(group: PixelCNNGroup, images, contexts, workdir, config: PixelCNNConfig, *, device=None,
                         progress=True, checkpoint_every=500, desc="pixelcnn group") -> TrainResult:
    """Like inversion.models.pixelcnn.train_pixelcnn (no validation), for a group: the loss is the sum of the
    K models' mean nats per image, so each model receives exactly its own gradient. Resumable
    (inversion.training.fit)."""
    conditional = contexts is not None
    data = [images, contexts] if conditional else [images]

    def loss_fn(g, batch):
        lp = g.sub_pixel_log_prob(batch[0], batch[1] if conditional else None)
        return -lp.sum(dim=(2, 3, 4)).mean(dim=1).sum()

    def on_start(g, batch):
        g.data_init(batch[0], batch[1] if conditional else None)

    loop = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, lr_decay=config.lr_decay,
                       adam_betas=(0.95, 0.9995), checkpoint_every=checkpoint_every, bf16=config.bf16,
                       seed=config.seed, progress=progress)
    return fit(group, loss_fn, data, loop, workdir, on_start=on_start, device=device, desc=desc)
