"""§5.1, inverting every layer of a classifier: its stages, its settings and its plan.

The stages here are the book's workhorses; §5.2 (architectures) and §5.3 (dynamics) reuse them:

  classifier   train a supervised classifier (Appendix A) with early stopping
  inversion    train a conditional PixelCNN++ p(x | h) on one layer's (image, activation) pairs (§4)
  unconditional  the same PixelCNN++ without h, p(x), on the dataset's training images (for warm starts)
  warm_inversion an inversion model started from the unconditional one (``warm_start_steps`` > 0)
  nce          its negative cross-entropy on test images, the bound on I(x; h) up to H(x) (§4.1)
  unconditional_nce  the unconditional model's: the NCE's gain over it estimates what h adds
  decoder      the MSE decoder baseline x_hat = f(h) on the same pairs (eq. 3)
  samples      samples from p(x | h(x)) for test images, sent back through the classifier (Table 1, Fig. 1)
  neighbours   nearest training images in a layer's representation space (Table 1, Fig. 2)

``layers_plan(P, dataset)`` turns the ``layers`` section of a parameter set into refs of these stages.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from inversion import data
from inversion.bounds import per_image_log_prob, summarize
from inversion.models.classifier import Classifier, ClassifierConfig, accuracy, layer_names, n_parameters, \
    train_classifier
from inversion.models.decoders import DecoderConfig, MSEDecoder, evaluate_mse, train_decoder
from inversion.models.pixelcnn import PixelCNNConfig, PixelCNNpp, train_pixelcnn
from inversion.models.sampling import METHODS as SAMPLING_METHODS, draw
from inversion.pipeline.cache import Context, Ref, ref, stage
from inversion.pipeline.common import features, features_and_logits, first, load_classifier, load_inversion, \
    load_split, test_split
from inversion.pipeline.params import Params
from inversion.pipeline.schema import ConfigError, closest
from inversion.training import check_field

__all__ = ["CLASSIFIER", "INVERSION", "NCE", "DECODER", "SAMPLES", "NEIGHBOURS", "LayersSettings", "layers_plan",
           "replicate_nces", "check_dataset", "inversion_ref", "unconditional_nce_ref", "with_seed"]


def check_dataset(name: str) -> None:
    if name not in data.DATASETS:
        raise ValueError(f"unknown dataset {name!r}; datasets: {', '.join(data.DATASETS)}")


def _check_at_least(name: str, value, low: int) -> None:
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


# =========================================================================================================
# Stage configs: a trainable thing's config plus what the stage needs to find its data
# =========================================================================================================


@dataclass(frozen=True, kw_only=True)
class ClassifierSettings(ClassifierConfig):
    """A classifier as a parameter set gives it: the model and its training, and how many training images."""

    n_train: int | None = None  # the first n of the train split (None: all)

    def __post_init__(self):
        super().__post_init__()
        _check_at_least("n_train", self.n_train, 1)


@dataclass(frozen=True, kw_only=True)
class ClassifierStageConfig(ClassifierSettings):
    dataset: str

    def __post_init__(self):
        super().__post_init__()
        check_dataset(self.dataset)


@dataclass(frozen=True, kw_only=True)
class PixelCNNRun(PixelCNNConfig):
    """A PixelCNN++, its training and its data: what the inversion, warm-inversion and unconditional stages
    share."""

    n_train: int | None = None  # the first n training images (None: all)
    n_valid: int = 1000  # validation images for early stopping (used when eval_every > 0)

    def __post_init__(self):
        super().__post_init__()
        _check_at_least("n_train", self.n_train, 1)
        _check_at_least("n_valid", self.n_valid, 1)


@dataclass(frozen=True, kw_only=True)
class InversionSettings(PixelCNNRun):
    """An inversion model as a parameter set gives it. ``warm_start_steps``: 0 trains it from scratch, the
    paper's recipe; N > 0 starts it from the dataset's unconditional PixelCNN++ of the same architecture and
    training settings, trained once for N steps (seed 0) and shared by every layer, network and snapshot
    of the section, with the conditioning at zero: at step 0 the model is exactly p(x), and its training
    only has to learn what h adds (``inversion_ref``). ``warm_start_lr``: the learning rate of that
    conditional phase (None: ``lr``, which the unconditional model trains with); fine-tuning a trained model
    usually wants a smaller one."""

    warm_start_steps: int = 0
    warm_start_lr: float | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_at_least("warm_start_steps", self.warm_start_steps, 0)
        if self.warm_start_lr is not None:
            check_field(self, "warm_start_lr", float, lambda v: v > 0, "a number > 0 (or null: lr)")


@dataclass(frozen=True, kw_only=True)
class InversionStageConfig(PixelCNNRun):
    layer: str


@dataclass(frozen=True, kw_only=True)
class UnconditionalConfig(PixelCNNRun):
    dataset: str

    def __post_init__(self):
        super().__post_init__()
        check_dataset(self.dataset)


@dataclass(frozen=True, kw_only=True)
class DecoderSettings(DecoderConfig):
    n_train: int | None = None
    n_valid: int = 1000

    def __post_init__(self):
        super().__post_init__()
        _check_at_least("n_train", self.n_train, 1)
        _check_at_least("n_valid", self.n_valid, 1)


@dataclass(frozen=True, kw_only=True)
class DecoderStageConfig(DecoderSettings):
    layer: str
    n_test: int = 10000  # test images for the test MSE
    n_show: int = 16  # reconstructions stored (of the first test images)

    def __post_init__(self):
        super().__post_init__()
        _check_at_least("n_test", self.n_test, 1)
        _check_at_least("n_show", self.n_show, 0)


@dataclass(frozen=True)
class NCEConfig:
    n_test: int = 10000  # the first n test images
    batch_size: int = 256

    def __post_init__(self):
        _check_at_least("n_test", self.n_test, 2)
        _check_at_least("batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class SamplesConfig:
    n_images: int = 500  # test images offset..offset+n_images
    offset: int = 0
    n_samples: int = 10  # samples per image
    nn_of: int = 10  # IM-NN: the closest of the first nn_of samples (the paper: 10)
    keep_topk: int | None = None  # store only the k closest samples per image (Fig. 2)
    method: Literal[SAMPLING_METHODS] = "cached"
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        for name in ("n_images", "n_samples", "nn_of", "batch_size"):
            _check_at_least(name, getattr(self, name), 1)
        _check_at_least("offset", self.offset, 0)
        _check_at_least("keep_topk", self.keep_topk, 1)


@dataclass(frozen=True)
class NeighboursConfig:
    layer: str
    n_test: int = 500
    pool: int | None = None  # the first n training images searched (None: all)
    k: int = 10
    batch_size: int = 64

    def __post_init__(self):
        for name in ("n_test", "pool", "k", "batch_size"):
            _check_at_least(name, getattr(self, name), 1)


# =========================================================================================================
# Stages
# =========================================================================================================


@stage("classifier", "1", ClassifierStageConfig, checkpoints=("model.pt",), data_parallel=True)
def train_classifier_stage(ctx: Context) -> dict:
    """Train a supervised classifier (Appendix A) with early stopping on validation accuracy."""
    c = ctx.config
    train = tuple(first(t, c.n_train) for t in load_split(c.dataset, "train"))
    valid = load_split(c.dataset, "valid")
    torch.manual_seed(c.seed)
    model = Classifier.from_config(data.IMAGE_SHAPES[c.dataset], c)
    res = train_classifier(model, train, valid, ctx.work, c, device=ctx.device, progress=ctx.progress)
    test_acc = accuracy(model, *load_split(c.dataset, "test"), device=ctx.device)
    shutil.copy(ctx.work / "best.pt", ctx.out / "model.pt")
    shutil.copy(ctx.work / "config.json", ctx.out / "config.json")
    for snap in ctx.work.glob("step_*.pt"):
        shutil.copy(snap, ctx.out / snap.name)
    ctx.log(f"test accuracy {test_acc:.4f} after {res.step} steps ({res.seconds:.0f} s)")
    return dict(test_accuracy=test_acc, valid_accuracy=res.best_score, best_step=res.best_step, steps=res.step,
                stopped_early=res.stopped_early, train_seconds=res.seconds, n_parameters=n_parameters(model),
                history=res.history)


def layer_training_pairs(ctx: Context):
    """(dataset, classifier, training images, their activations at the configured layer): what every model
    that inverts a layer (PixelCNN++ or MSE decoder) is trained on."""
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    dataset = clf_res.config["dataset"]
    clf = load_classifier(clf_res, ctx.device)
    x_tr = first(load_split(dataset, "train")[0], c.n_train)
    return dataset, clf, x_tr, features(clf, x_tr, c.layer, ctx.device)


def _fit_pixelcnn(ctx: Context, dataset: str, x_tr, h_tr, valid, start=None) -> dict:
    """Train the PixelCNN++ of ``ctx.config`` on (images, contexts) (``h_tr`` None: unconditional), from
    scratch or from ``start`` (an unconditional model: ``PixelCNNpp.start_from``); save it; its metrics."""
    c = ctx.config
    torch.manual_seed(c.seed)
    model = PixelCNNpp.from_config(data.IMAGE_SHAPES[dataset], None if h_tr is None else tuple(h_tr.shape[1:]), c)
    if start is not None:
        model.start_from(start)
    what = getattr(c, "layer", "unconditional")
    res = train_pixelcnn(model, x_tr, h_tr, ctx.work, c, valid=valid, device=ctx.device, progress=ctx.progress,
                         desc=f"pixelcnn {dataset}/{what}", data_init=start is None, compile=ctx.compile,
                         cuda_graph=ctx.cuda_graph)
    if ctx.compile:
        ctx.execution["compiled"] = True
    if ctx.cuda_graph:
        ctx.execution["cuda_graph"] = True
    torch.save(model.state_dict(), ctx.out / "model.pt")  # train_pixelcnn left the best weights in model
    (ctx.out / "model.json").write_text(json.dumps(model.config, indent=1))
    losses = [row["loss"] for row in res.history]
    ctx.log(f"{res.step} steps in {res.seconds:.0f} s")
    return dict(steps=res.step, train_seconds=res.seconds, steps_per_second=res.step / max(res.seconds, 1e-9),
                best_valid_nats=res.best_score, best_step=res.best_step, n_parameters=model.n_parameters(),
                context_shape=None if h_tr is None else list(h_tr.shape[1:]), history=res.history,
                last_loss=losses[-1] if losses else None)


def _inversion_validation(ctx: Context, dataset: str, clf):
    c = ctx.config
    if not (c.eval_every and c.n_valid):
        return None
    x_va = load_split(dataset, "valid")[0][: c.n_valid]
    return x_va, features(clf, x_va, c.layer, ctx.device)


@stage("inversion", "1", InversionStageConfig, deps=("classifier",), checkpoints=("model.pt",),
       data_parallel=True)
def train_inversion(ctx: Context) -> dict:
    """Train a conditional PixelCNN++ p(x | h) on one classifier layer (§4, Appendix A)."""
    dataset, clf, x_tr, h_tr = layer_training_pairs(ctx)
    return _fit_pixelcnn(ctx, dataset, x_tr, h_tr, _inversion_validation(ctx, dataset, clf))


@stage("unconditional", "1", UnconditionalConfig, checkpoints=("model.pt",), data_parallel=True)
def train_unconditional(ctx: Context) -> dict:
    """Train the PixelCNN++ without context, p(x), on the dataset's first ``n_train`` training images: the
    start of every warm-started inversion model of that dataset and architecture."""
    c = ctx.config
    x_tr = first(load_split(c.dataset, "train")[0], c.n_train)
    valid = (load_split(c.dataset, "valid")[0][: c.n_valid], None) if c.eval_every and c.n_valid else None
    return _fit_pixelcnn(ctx, c.dataset, x_tr, None, valid)


@stage("warm_inversion", "1", InversionStageConfig, deps=("classifier", "unconditional"), checkpoints=("model.pt",),
       data_parallel=True)
def train_warm_inversion(ctx: Context) -> dict:
    """Train a conditional PixelCNN++ p(x | h) on one layer, started from the unconditional model: at step 0
    it is p(x) for every h (its conditioning projections at zero), so training learns only what h adds."""
    dataset, clf, x_tr, h_tr = layer_training_pairs(ctx)
    start = load_inversion(ctx.dep("unconditional", need=("model.pt",)), ctx.device)
    return _fit_pixelcnn(ctx, dataset, x_tr, h_tr, _inversion_validation(ctx, dataset, clf), start=start)


@stage("nce", "1", NCEConfig, deps=("classifier", "inversion"))
def evaluate_nce(ctx: Context) -> dict:
    """The NCE bound (mean test log p(x | h), nats per image) with its standard error (§4.1)."""
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    inv_res = ctx.dep("inversion", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    model = load_inversion(inv_res, ctx.device)
    x, _ = test_split(clf_res.config["dataset"], c.n_test)
    h = features(clf, x, inv_res.config["layer"], ctx.device)
    lp = per_image_log_prob(model, x, h, batch_size=c.batch_size, progress=ctx.progress)
    np.save(ctx.out / "log_probs.npy", lp.numpy())
    s = summarize(lp, dims=int(x[0].numel()))
    ctx.log(f"NCE {s.nats:.2f} ± {s.stderr:.2f} nats ({s.bits_per_dim:.3f} bits/dim)")
    return s.as_dict()


@stage("unconditional_nce", "1", NCEConfig, deps=("unconditional",))
def evaluate_unconditional_nce(ctx: Context) -> dict:
    """The unconditional model's mean test log p(x) on the first ``n_test`` test images. On the same images
    an inversion model's NCE minus this is what conditioning on h adds, for this model family (an estimate
    of the usable information in h, Xu et al. 2020)."""
    c = ctx.config
    res = ctx.dep("unconditional", need=("model.pt",))
    model = load_inversion(res, ctx.device)
    x, _ = test_split(res.config["dataset"], c.n_test)
    lp = per_image_log_prob(model, x, None, batch_size=c.batch_size, progress=ctx.progress)
    np.save(ctx.out / "log_probs.npy", lp.numpy())
    s = summarize(lp, dims=int(x[0].numel()))
    ctx.log(f"unconditional NCE {s.nats:.2f} ± {s.stderr:.2f} nats ({s.bits_per_dim:.3f} bits/dim)")
    return s.as_dict()


@stage("decoder", "2", DecoderStageConfig, deps=("classifier",), checkpoints=("model.pt",),
       data_parallel=True)
def train_decoder_stage(ctx: Context) -> dict:
    """Train the MSE decoder baseline x_hat = f(h) (eq. 3) on one layer; its MSE on test images and on as
    many of its training images (how well it fits: a test MSE far above the training MSE is overfitting, both
    high underfitting), and reconstructions. Version 2: the spatial decoder up-samples by transposed
    convolutions (``inversion.models.decoders``)."""
    c = ctx.config
    dataset, clf, x_tr, h_tr = layer_training_pairs(ctx)
    x_va = load_split(dataset, "valid")[0][: c.n_valid]
    valid = (features(clf, x_va, c.layer, ctx.device), x_va) if c.eval_every and c.n_valid else None
    torch.manual_seed(c.seed)
    dec = MSEDecoder(tuple(h_tr.shape[1:]), data.IMAGE_SHAPES[dataset], n_filters=c.n_filters)
    res = train_decoder(dec, h_tr, x_tr, ctx.work, c, valid=valid, device=ctx.device, progress=ctx.progress)
    dec.eval()
    x_te, _ = test_split(dataset, c.n_test)
    h_te = features(clf, x_te, c.layer, ctx.device)
    mse = evaluate_mse(dec, h_te, x_te)
    train_mse = evaluate_mse(dec, h_tr[: len(x_te)], x_tr[: len(x_te)])
    n_show = min(c.n_show, len(x_te))
    recon = dec.reconstruct(h_te[:n_show].to(ctx.device)).cpu()
    ctx.save_npz("reconstructions.npz", images=recon.numpy(), test_index=np.arange(n_show))
    torch.save(dec.state_dict(), ctx.out / "model.pt")
    shutil.copy(ctx.work / "config.json", ctx.out / "config.json")
    ctx.log(f"test MSE {mse:.5f}")
    return dict(test_mse=mse, train_mse=train_mse, steps=res.step, train_seconds=res.seconds, best_step=res.best_step, history=res.history)


@stage("samples", "2", SamplesConfig, deps=("classifier", "inversion"))
def draw_samples(ctx: Context) -> dict:
    """Sample the inversion model for test images; distances of the samples' representations (Table 1).

    For test images offset..offset+n_images, ``n_samples`` samples each are drawn from p(x | h(x)), sent back
    through the classifier, and compared with the input at the same layer: ``dist`` is the mean absolute
    difference per unit, L1(h, h_hat) / dim(h). IM-S is the first sample's distance, IM-NN the smallest of
    the first ``nn_of`` (the paper: 10). ``keep_topk`` stores only the k closest samples per image (Fig. 2
    draws 1024 and shows 6); otherwise all are stored, with per sample its class by the classifier
    (``pred``; ``input_pred`` is the input's), whether that is the input's class (``agree``) and its pixel
    L1 to the input (``pixel_l1``).
    """
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    inv_res = ctx.dep("inversion", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    model = load_inversion(inv_res, ctx.device)
    layer = inv_res.config["layer"]
    x, y = test_split(clf_res.config["dataset"], c.n_images, c.offset)
    with torch.no_grad():
        feats = clf.features(x.to(ctx.device))  # every layer at once; n_images is small
    h, pred = feats[layer].float(), feats["logits"].argmax(1)
    n, k = len(x), c.n_samples
    gen = torch.Generator().manual_seed(c.seed)
    noise = model.draw_noise(n * k, gen).cpu()
    context = h.repeat_interleave(k, dim=0)
    chunks, passes, t0 = [], [], time.perf_counter()
    for i in range(0, n * k, c.batch_size):
        # network passes per batch: the fixed point's count, H*W for the naive sampler, none for the cached
        # one (it computes each activation once: the work of about one pass)
        drawn = draw(model, context[i : i + c.batch_size], noise=noise[i : i + c.batch_size], method=c.method)
        chunks.append(drawn.images.cpu())
        passes.append(drawn.network_passes)
    sample_seconds = time.perf_counter() - t0
    samples = torch.cat(chunks)  # [n*k, C, H, W] uint8
    s_feats = features_and_logits(clf, samples, layer, ctx.device)
    dist = (s_feats[layer].cpu() - context.cpu()).abs().flatten(1).mean(1).view(n, k)
    sample_pred = s_feats["logits"].argmax(1).view(n, k).cpu()  # the classifier's class for each sample
    agree = (sample_pred == pred.cpu()[:, None]).float()
    xs = samples.view(n, k, *x.shape[1:]).float() / 255.0
    pix = (xs - x.float()[:, None] / 255.0).abs().flatten(2).mean(2)  # [n, k] pixel L1 to own input
    # Pixel L1 from each image's samples to every input of the set: do samples keep the input's style, or
    # only its class? (own input vs other test inputs of the same class)
    to_all = torch.stack([(xs - (x[j].float() / 255.0)).abs().flatten(2).mean(2).mean(1) for j in range(n)], 1)
    if c.keep_topk:
        order = dist.argsort(dim=1)[:, : c.keep_topk]
        kept = samples.view(n, k, *x.shape[1:])[torch.arange(n)[:, None], order]
        ctx.save_npz("samples.npz", samples=kept.numpy(), order=order.numpy(), dist=dist.numpy(),
                     test_index=np.arange(c.offset, c.offset + n), labels=y.numpy())
        stored = kept
    else:
        stored = samples.view(n, k, *x.shape[1:])
        ctx.save_npz("samples.npz", samples=stored.numpy(), dist=dist.numpy(), agree=agree.numpy(),
                     pred=sample_pred.numpy(), input_pred=pred.cpu().numpy(), pixel_l1=pix.numpy(), pixel_l1_to_inputs=to_all.numpy(),
                     test_index=np.arange(c.offset, c.offset + n), labels=y.numpy())
    nn_of = min(c.nn_of, k)
    most = "" if None in passes else f" ({max(passes)} network passes at most per batch)"
    ctx.log(f"{n * k} samples in {sample_seconds:.0f} s{most}; "
            f"IM-S {dist[:, 0].mean():.4g}, IM-NN {dist[:, :nn_of].min(1).values.mean():.4g}")
    return dict(im_s=dist[:, 0].mean().item(), im_nn=dist[:, :nn_of].min(1).values.mean().item(),
                im_s_stderr=(dist[:, 0].std() / math.sqrt(n)).item() if n > 1 else None,
                top1=dist.min(1).values.mean().item(), nn_of=nn_of, class_agreement=agree.mean().item(),
                pixel_l1=pix.mean().item(), sample_seconds=sample_seconds,
                samples_per_second=n * k / max(sample_seconds, 1e-9), stored_shape=list(stored.shape),
                network_passes=passes)


@stage("neighbours", "1", NeighboursConfig, deps=("classifier",))
def find_neighbours(ctx: Context) -> dict:
    """Nearest training images to test images in a layer's representation space (L1 per unit; Table 1, Fig. 2)."""
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    dataset = clf_res.config["dataset"]
    pool = first(load_split(dataset, "train")[0], c.pool)
    x, _ = test_split(dataset, c.n_test)
    hp = features(clf, pool, c.layer, ctx.device).flatten(1).to(ctx.device)
    hx = features(clf, x, c.layer, ctx.device).flatten(1).to(ctx.device)
    dims = hp.shape[1]
    idx, dist = [], []
    for i in range(0, len(hx), c.batch_size):
        d = torch.cdist(hx[i : i + c.batch_size], hp, p=1) / dims
        v, j = d.topk(min(c.k, len(hp)), dim=1, largest=False)
        idx.append(j.cpu())
        dist.append(v.cpu())
    idx, dist = torch.cat(idx), torch.cat(dist)
    ctx.save_npz("neighbours.npz", index=idx.numpy(), dist=dist.numpy())
    return dict(nn1=dist[:, 0].mean().item(), pool=len(pool), n_test=len(x), dims=dims)


CLASSIFIER, INVERSION, NCE = train_classifier_stage, train_inversion, evaluate_nce
UNCONDITIONAL, WARM_INVERSION, UNCONDITIONAL_NCE = train_unconditional, train_warm_inversion, evaluate_unconditional_nce
DECODER, SAMPLES, NEIGHBOURS = train_decoder_stage, draw_samples, find_neighbours
STAGES = (CLASSIFIER, INVERSION, UNCONDITIONAL, WARM_INVERSION, NCE, UNCONDITIONAL_NCE, DECODER, SAMPLES, NEIGHBOURS)


# =========================================================================================================
# The section's settings and its plan
# =========================================================================================================


@dataclass(frozen=True)
class SamplingSettings:
    method: Literal[SAMPLING_METHODS] = SamplesConfig.method
    batch_size: int = SamplesConfig.batch_size


@dataclass(frozen=True)
class LayersEvaluation:
    n_test_nce: int = NCEConfig.n_test  # test images for the NCE and the decoder's test MSE
    n_images: int = SamplesConfig.n_images  # test images for Table 1, Fig. 1 and the widget
    n_samples: int = SamplesConfig.n_samples  # samples per test image
    nn_pool: int | None = NeighboursConfig.pool  # training images searched for nearest neighbours
    nn_k: int = NeighboursConfig.k  # neighbours kept per test image

    def __post_init__(self):
        SamplesConfig(n_images=self.n_images, n_samples=self.n_samples)
        NeighboursConfig(layer="", pool=self.nn_pool, k=self.nn_k)
        NCEConfig(n_test=self.n_test_nce)


@dataclass(frozen=True)
class FigureSamples:
    n_images: int = 3  # test images shown
    n_samples: int = 3  # samples shown per image

    def __post_init__(self):
        _check_at_least("n_images", self.n_images, 1)
        _check_at_least("n_samples", self.n_samples, 1)


@dataclass(frozen=True)
class Figure2Settings:
    layer: str = "fc3"  # the layer whose samples are ranked (the paper: FC3)
    n_images: int = 6
    n_samples: int = 1024  # samples drawn per image (the paper: 1024)
    top_k: int = 6  # closest samples and nearest training images shown

    def __post_init__(self):
        for name in ("n_images", "n_samples", "top_k"):
            _check_at_least(name, getattr(self, name), 1)


@dataclass(frozen=True)
class WidgetSettings:
    n_images: int = 6  # test images the scrubber offers

    def __post_init__(self):
        _check_at_least("n_images", self.n_images, 1)


@dataclass(frozen=True, kw_only=True)
class LayersSettings:
    """The ``layers`` section (§5.1): which datasets and layers, and how each stage is configured."""

    datasets: tuple[str, ...]
    layers: tuple[str, ...]
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    inversion: InversionSettings = field(default_factory=InversionSettings)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    evaluation: LayersEvaluation = field(default_factory=LayersEvaluation)
    figure1: FigureSamples = field(default_factory=FigureSamples)
    figure2: Figure2Settings = field(default_factory=Figure2Settings)
    widget: WidgetSettings = field(default_factory=WidgetSettings)
    per_dataset: dict[str, dict] = field(default_factory=dict)  # {dataset: partial settings}
    per_layer: dict[str, dict] = field(default_factory=dict)  # {layer or "dataset/layer": partial settings}

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("datasets: give at least one dataset")
        for i, d in enumerate(self.datasets):
            if d not in data.DATASETS:
                raise ConfigError(f"datasets[{i}]: unknown dataset {d!r}; datasets: {', '.join(data.DATASETS)}")
        check_layers(self.layers, self.classifier.arch, "layers")
        check_layers((self.figure2.layer,), self.classifier.arch, "figure2.layer")

    def combinations(self, raw: Mapping) -> list[tuple]:
        """Every (dataset, layer, arch) whose merged settings differ from the section's: validated at load."""
        out = []
        for d in raw.get("per_dataset") or {}:
            if d not in data.DATASETS:
                raise ConfigError(f"per_dataset.{d}: unknown dataset {d!r}; datasets: {', '.join(data.DATASETS)}")
            out += [(d, layer, None) for layer in self.layers] + [(d, None, None)]
        for key in raw.get("per_layer") or {}:
            d, _, layer = key.rpartition("/")
            if d and d not in data.DATASETS:
                raise ConfigError(f"per_layer.{key}: unknown dataset {d!r}; datasets: {', '.join(data.DATASETS)}")
            check_layers((layer,), self.classifier.arch, f"per_layer.{key}")
            out += [(d, layer, None)] if d else [(x, layer, None) for x in (self.datasets or [None])]
        return out


def check_layers(layers, arch: str, where: str) -> None:
    """Every layer must be one the classifier architecture has."""
    valid = layer_names(arch)
    if not layers:
        raise ConfigError(f"{where}: give at least one layer ({', '.join(valid)})")
    for i, layer in enumerate(layers):
        if layer not in valid:
            at = f"{where}[{i}]" if len(layers) > 1 or where == "layers" else where
            raise ConfigError(f"{at}: {layer!r} is not a layer of the {arch} classifier ({', '.join(valid)})"
                              f"{closest(layer, valid)}")


def _pixelcnn_run(settings: InversionSettings) -> dict:
    """The settings as a ``PixelCNNRun`` config: without the warm-start fields, which only choose the stage."""
    return {k: v for k, v in asdict(settings).items() if k not in ("warm_start_steps", "warm_start_lr")}


def inversion_ref(settings: InversionSettings, layer: str, clf: Ref, dataset: str) -> Ref:
    """The inversion model of ``layer`` of classifier ``clf`` with these settings: trained from scratch (the
    ``inversion`` stage) or, with ``warm_start_steps`` > 0, from ``unconditional_ref`` (``warm_inversion``).
    Every plan builds its inversion models here."""
    cfg = {**_pixelcnn_run(settings), "layer": layer}
    if not settings.warm_start_steps:
        return ref(INVERSION, cfg, classifier=clf)
    return ref(WARM_INVERSION, {**cfg, "lr": settings.warm_start_lr or settings.lr}, classifier=clf,
               unconditional=unconditional_ref(settings, dataset))


def unconditional_ref(settings: InversionSettings, dataset: str) -> Ref:
    """The unconditional PixelCNN++ that warm starts begin from: the settings' architecture and training,
    ``warm_start_steps`` steps, seed 0, on ``dataset``'s training images (one per dataset and settings)."""
    return ref(UNCONDITIONAL, {**_pixelcnn_run(settings), "steps": settings.warm_start_steps, "seed": 0,
                               "dataset": dataset})


def unconditional_nce_ref(settings: InversionSettings, dataset: str, n_test: int) -> Ref | None:
    """The unconditional model's test log-likelihood on ``n_test`` images, when the settings warm start."""
    if not settings.warm_start_steps:
        return None
    return ref(UNCONDITIONAL_NCE, {"n_test": n_test}, unconditional=unconditional_ref(settings, dataset))


def with_seed(inversion: Ref, seed: int) -> Ref:
    """The same inversion model (same stage, settings and dependencies) with another seed."""
    return ref(inversion.stage, {**inversion.config, "seed": int(seed)}, **inversion.deps)


def replicate_nces(seeds, n_test: int, inversion: Ref) -> dict[int, Ref]:
    """{seed: nce ref} of inversion models that differ from ``inversion`` only in their seed: their spread is
    the part of an NCE difference that the test-set standard error does not see, the variation from training
    the inversion model itself (§5.2 and §5.3 train them: ``replicate_seeds``)."""
    clf = inversion.deps["classifier"]
    return {int(seed): ref(NCE, {"n_test": n_test}, classifier=clf, inversion=with_seed(inversion, seed))
            for seed in seeds or ()}


def layers_plan(P: Params, dataset: str) -> dict:
    """Refs of §5.1 for one dataset: the classifier, and per layer the inversion model, its NCE, the MSE
    decoder, samples (Table 1, Fig. 1, widget), nearest neighbours; plus Fig. 2's many-sample draw.

    Returns {"classifier": ref, "layers": {layer: {"inversion", "nce", "decoder", "samples", "neighbours",
    and "unconditional_nce" when warm-started}},
    "figure2": ref (when figure2.layer is one of the layers)}."""
    S = P.section("layers", dataset)
    clf = ref(CLASSIFIER, {**asdict(S.classifier), "dataset": dataset})
    plan = {"classifier": clf, "layers": {}}
    ev = S.evaluation
    for layer in S.layers:
        L = P.section("layers", dataset, layer)
        inv = inversion_ref(L.inversion, layer, clf, dataset)
        plan["layers"][layer] = {
            "inversion": inv,
            "nce": ref(NCE, {"n_test": ev.n_test_nce}, classifier=clf, inversion=inv),
            "decoder": ref(DECODER, {**asdict(L.decoder), "layer": layer, "n_test": ev.n_test_nce,
                                     "n_show": ev.n_images}, classifier=clf),
            "samples": ref(SAMPLES, {"n_images": ev.n_images, "n_samples": ev.n_samples, **asdict(L.sampling)},
                           classifier=clf, inversion=inv),
            "neighbours": ref(NEIGHBOURS, {"layer": layer, "n_test": ev.n_images, "pool": ev.nn_pool,
                                           "k": max(ev.nn_k, S.figure2.top_k)}, classifier=clf),
        }
        u = unconditional_nce_ref(L.inversion, dataset, ev.n_test_nce)
        if u is not None:  # a warm start: the NCE of the p(x) it started from
            plan["layers"][layer]["unconditional_nce"] = u
    f2 = S.figure2
    if f2.layer in plan["layers"]:
        inv = plan["layers"][f2.layer]["inversion"]
        sampling = asdict(P.section("layers", dataset, f2.layer).sampling)
        plan["figure2"] = ref(SAMPLES, {"n_images": f2.n_images, "offset": 0, "n_samples": f2.n_samples,
                                        "keep_topk": f2.top_k, **sampling}, classifier=clf, inversion=inv)
    return plan
