"""Maximum-likelihood training of a conditional density model p(x | h) through the shared loop.

The PixelCNN++ and the conditional flow train the same way: minimise minus the mean of ``model.log_prob(x,
h)`` (nats per image; for the flow a one-draw dequantization bound), initialise data-dependent layers on the
first batch of a fresh run (``model.data_init``), and, with validation pairs, score the mean validation
log-likelihood and keep the best weights. Only their configs differ, so each ``train_*`` function builds its
``TrainConfig`` and calls ``fit_density``.
"""

from __future__ import annotations

from inversion.bounds import per_image_log_prob
from inversion.training import TrainConfig, TrainResult, fit

__all__ = ["fit_density"]


def fit_density(model, images, contexts, workdir, loop: TrainConfig, *, valid=None, device=None,
                desc: str = "density", data_init: bool = True) -> TrainResult:
    """Train ``model`` (with ``log_prob(x, h)`` and ``data_init(x, h)``) on (image, context) pairs (``contexts``
    None for an unconditional model) with ``loop``; ``valid=(images, contexts)`` adds the validation score
    (used when ``loop.eval_every`` > 0) and ends with the best weights. Resumable (``inversion.training.fit``).
    ``data_init=False`` keeps the weights the model starts with (a warm start) instead of initialising its
    layers from the first batch."""
    conditional = contexts is not None
    data = [images, contexts] if conditional else [images]

    if loop.cuda_graph:
        # log_prob checks every batch's values on the host, which a recorded step cannot do: check all the
        # training pairs once here, then record the same loss without the checks.
        if not hasattr(model, "sub_pixel_log_prob"):
            raise ValueError(f"cuda_graph: {type(model).__name__} has no unchecked log-likelihood to record; "
                             "train it without cuda_graph")
        model.check_images(images)
        model.check_context(contexts, len(images))

        def loss_fn(m, batch):
            context = m.on_device(batch[1]) if conditional else None
            return -m.sub_pixel_log_prob(batch[0], context).sum(dim=(1, 2, 3)).mean()
    else:
        def loss_fn(m, batch):
            return -m.log_prob(batch[0], batch[1] if conditional else None).mean()

    def on_start(m, batch):
        m.data_init(batch[0], batch[1] if conditional else None)

    eval_fn = None
    if valid is not None:

        def eval_fn(m):
            lp = per_image_log_prob(m, valid[0], valid[1], batch_size=max(loop.batch_size, 64), progress=False)
            return {"score": lp.mean().item(), "valid_nats": lp.mean().item()}

    return fit(model, loss_fn, data, loop, workdir, eval_fn=eval_fn, on_start=on_start if data_init else None,
               device=device, desc=desc, restore_best=True)
