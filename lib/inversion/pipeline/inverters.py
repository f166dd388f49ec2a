"""Other ways to invert a layer, beside §5.1's PixelCNN++: their stages, settings and plan.

On the §5.1 classifier and its layers, three families that later work used to show what a layer ignores
are trained as inverters of the same (image, activation) pairs as the PixelCNN++ (``inversion.models``):

  flow_inversion   a conditional normalizing flow p(x | h) on dequantized pixels (after Rombach et al. 2020's
                   conditional INN, but on pixels): a lower bound on log P(x | h) in nats
  vae_inversion    a conditional VAE q(z | x, h) p(x | h, z) with a discretized decoder: the ELBO and the
                   importance-weighted bound on log P(x | h) in nats
  gan_inversion    a feedforward generator G(h, z) trained with pixel, feature-space and adversarial losses
                   (after Teterwak et al. 2021): samples, no likelihood
  supervised_vae   the supervised VAE of Nguyen & Rodríguez Martínez (2020) in its own form: a VAE of x whose
                   first latent dimensions also classify; its test accuracy and nuisance samples
  inverter_eval    one trained inverter on test images: its bound (none for the GAN), samples sent back
                   through the classifier (Table 1's IM-S and IM-NN), class agreement, the samples' diversity
                   and the sampling speed

The PixelCNN++ of each layer is §5.1's own (``layers_plan``): same classifier ref, same key, trained once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import numpy as np
import torch

from inversion import data
from inversion.bounds import summarize
from inversion.models.flow import ConditionalFlow, FlowConfig, train_flow
from inversion.models.gan import Discriminator, GANConfig, Generator, train_gan
from inversion.models.vae import ConditionalVAE, SupervisedVAE, SupervisedVAEConfig, VAEConfig, train_supervised_vae, \
    train_vae
from inversion.pipeline.cache import Context, ref, stage
from inversion.pipeline.common import features, features_and_logits, first, load_classifier, load_split, test_split
from inversion.pipeline.layers import check_dataset, layer_training_pairs, layers_plan, replicate_nces
from inversion.pipeline.params import Params
from inversion.pipeline.schema import ConfigError
from inversion.training import load_checkpoint

__all__ = ["FAMILIES", "FLOW", "VAE", "GAN", "SUPERVISED_VAE", "EVALUATE", "InvertersSettings", "inverters_plan",
           "inverter_datasets"]

FAMILIES = ("flow", "vae", "gan")  # the stage of each is <family>_inversion
BOUNDED = ("flow", "vae")  # the families with a bound on log P(x | h) (the GAN has none)
MODEL_CLASSES = {"flow": ConditionalFlow, "vae": ConditionalVAE, "gan": Generator}


def _at_least(name: str, value, low: int) -> None:
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


# =========================================================================================================
# Stage configs: a model's config, and which data it is trained on
# =========================================================================================================


@dataclass(frozen=True, kw_only=True)
class TrainingSubset:
    """What every family's settings add to its model config: how many training images it sees. Listed first
    among the bases, so its check runs after the model config's own."""

    n_train: int | None = None  # the first n training images (None: all)

    def __post_init__(self):
        super().__post_init__()
        _at_least("n_train", self.n_train, 1)


@dataclass(frozen=True, kw_only=True)
class FlowSettings(TrainingSubset, FlowConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class VAESettings(TrainingSubset, VAEConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class GANSettings(TrainingSubset, GANConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class SupervisedVAESettings(TrainingSubset, SupervisedVAEConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class FlowStageConfig(FlowSettings):
    layer: str


@dataclass(frozen=True, kw_only=True)
class VAEStageConfig(VAESettings):
    layer: str


@dataclass(frozen=True, kw_only=True)
class GANStageConfig(GANSettings):
    layer: str


@dataclass(frozen=True, kw_only=True)
class SupervisedVAEStageConfig(SupervisedVAESettings):
    dataset: str
    n_test: int = 10000  # test images for accuracy and the ELBO
    n_images: int = 6  # test images whose nuisance samples are stored
    n_samples: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_dataset(self.dataset)
        for name in ("n_test", "n_images", "n_samples"):
            _at_least(name, getattr(self, name), 1)


@dataclass(frozen=True)
class EvaluationConfig:
    family: Literal[FAMILIES]
    n_test: int = 10000  # test images for the bound
    bound_samples: int = 1  # dequantization draws per image (flow)
    iwae_k: int = 64  # importance samples of the IWAE bound (VAE)
    n_images: int = 100  # test images whose samples are drawn
    n_samples: int = 10  # samples per test image
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        _at_least("n_test", self.n_test, 2)
        for name in ("bound_samples", "iwae_k", "n_images", "n_samples", "batch_size"):
            _at_least(name, getattr(self, name), 1)


# =========================================================================================================
# Stages
# =========================================================================================================


def _save_model(ctx: Context, model: torch.nn.Module) -> None:
    torch.save(model.state_dict(), ctx.out / "model.pt")
    (ctx.out / "model.json").write_text(json.dumps(model.config, indent=1))


def _as(config, cls):
    """The model's own config (``cls``) out of a stage config that extends it with data settings."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def _trained(res, n_parameters: int) -> dict:
    return dict(steps=res.step, train_seconds=res.seconds, n_parameters=n_parameters, history=res.history)


def _train_density_model(ctx: Context, model_class, config_class, train) -> dict:
    """Train a flow or a VAE (``model_class`` with ``config_class``, trained by ``train``) on one layer."""
    c = ctx.config
    dataset, _, x_tr, h_tr = layer_training_pairs(ctx)
    torch.manual_seed(c.seed)
    model = model_class.from_config(data.IMAGE_SHAPES[dataset], tuple(h_tr.shape[1:]), c)
    res = train(model, x_tr, h_tr, ctx.work, _as(c, config_class), device=ctx.device, progress=ctx.progress,
                desc=f"{ctx.ref.stage.name} {dataset}/{c.layer}")
    _save_model(ctx, model)
    ctx.log(f"{res.step} steps in {res.seconds:.0f} s")
    return _trained(res, sum(p.numel() for p in model.parameters()))


@stage("flow_inversion", "1", FlowStageConfig, deps=("classifier",), checkpoints=("model.pt",))
def train_flow_stage(ctx: Context) -> dict:
    """Train a conditional flow p(x | h) on one layer's (image, activation) pairs."""
    return _train_density_model(ctx, ConditionalFlow, FlowConfig, train_flow)


@stage("vae_inversion", "1", VAEStageConfig, deps=("classifier",), checkpoints=("model.pt",))
def train_vae_stage(ctx: Context) -> dict:
    """Train a conditional VAE q(z | x, h) p(x | h, z) on one layer's (image, activation) pairs."""
    return _train_density_model(ctx, ConditionalVAE, VAEConfig, train_vae)


@stage("gan_inversion", "1", GANStageConfig, deps=("classifier",), checkpoints=("model.pt",))
def train_gan_stage(ctx: Context) -> dict:
    """Train a feedforward generator G(h, z) against a projection discriminator on one layer."""
    c = ctx.config
    dataset, clf, x_tr, h_tr = layer_training_pairs(ctx)
    torch.manual_seed(c.seed)
    shape, context_shape = data.IMAGE_SHAPES[dataset], tuple(h_tr.shape[1:])
    gen = Generator.from_config(context_shape, shape, c)
    disc = Discriminator.from_config(context_shape, shape, c)
    res = train_gan(gen, disc, clf, c.layer, x_tr, h_tr, ctx.work, _as(c, GANConfig), device=ctx.device,
                    progress=ctx.progress, desc=f"gan {dataset}/{c.layer}")
    _save_model(ctx, gen.eval())
    ctx.log(f"{res.step} steps in {res.seconds:.0f} s")
    return _trained(res, sum(p.numel() for p in gen.parameters()))


@stage("supervised_vae", "1", SupervisedVAEStageConfig, checkpoints=("model.pt",))
def train_supervised_vae_stage(ctx: Context) -> dict:
    """Train the supervised VAE on (image, label) pairs; its test accuracy, ELBO and nuisance samples."""
    c = ctx.config
    x_tr, y_tr = (first(t, c.n_train) for t in load_split(c.dataset, "train"))
    torch.manual_seed(c.seed)
    model = SupervisedVAE.from_config(data.IMAGE_SHAPES[c.dataset], 10, c)
    res = train_supervised_vae(model, x_tr, y_tr, ctx.work, _as(c, SupervisedVAEConfig), device=ctx.device, progress=ctx.progress)
    model.eval()
    x, y = test_split(c.dataset, c.n_test)
    gen = torch.Generator().manual_seed(c.seed)
    with torch.no_grad():
        acc = model.accuracy(x, y)
        elbo = model.elbo(x.to(ctx.device), generator=gen).cpu()
        shown = model.nuisance_samples(x[: c.n_images].to(ctx.device), c.n_samples, generator=gen).cpu()
    ctx.save_npz("nuisance.npz", samples=shown.numpy(), test_index=np.arange(c.n_images), labels=y[: c.n_images])
    _save_model(ctx, model)
    s = summarize(elbo, dims=int(x[0].numel()))
    ctx.log(f"test accuracy {acc:.4f}, ELBO {s.nats:.1f} nats")
    return dict(test_accuracy=acc, elbo_nats=s.nats, elbo_stderr=s.stderr, **_trained(res, sum(
        p.numel() for p in model.parameters())))


def load_inverter(result, family: str, device) -> torch.nn.Module:
    """The trained model of a ``<family>_inversion`` result, in eval mode."""
    model = MODEL_CLASSES[family](**json.loads(result.path("model.json").read_text()))
    model.load_state_dict(load_checkpoint(result.path("model.pt"), map_location="cpu"))
    return model.to(device).eval()


def _draw(model, family: str, h: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One uint8 sample per row of h (the GAN's z, the flow's v, the VAE's z and pixels drawn from ``gen``)."""
    return model.sample(h, 1, generator=gen) if family == "gan" else model.sample(h, generator=gen)


SWAP_IMAGES = 5  # test images of the flow's swap grid (residual of image i decoded with h of image j)


@stage("inverter_eval", "3", EvaluationConfig, deps=("classifier", "model"))
def evaluate_inverter(ctx: Context) -> dict:
    """One inverter on test images: its bound on log P(x | h) in nats (flow, VAE; none for the GAN), and
    samples for ``n_images`` test images sent back through the classifier (as §5.1's samples stage). For the
    flow also the swap grid (swap.npz): the residual v of test image i given its h, decoded with the h of
    test image j, for the first ``SWAP_IMAGES`` images (the diagonal gives the images back)."""
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    model_res = ctx.dep("model", need=("model.pt",))
    if model_res.stage != f"{c.family}_inversion":
        raise ValueError(f"inverter_eval of family {c.family!r} was given a {model_res.stage} result")
    clf = load_classifier(clf_res, ctx.device)
    model = load_inverter(model_res, c.family, ctx.device)
    layer, dataset = model_res.config["layer"], clf_res.config["dataset"]
    out = {}
    gen = torch.Generator().manual_seed(c.seed)
    if c.family != "gan":
        x, _ = test_split(dataset, c.n_test)
        h = features(clf, x, layer, ctx.device)
        bound, iwae = [], []
        with torch.no_grad():
            for i in range(0, len(x), c.batch_size):
                xb, hb = x[i : i + c.batch_size].to(ctx.device), h[i : i + c.batch_size].to(ctx.device)
                if c.family == "flow":
                    bound.append(model.log_prob_bound(xb, hb, n_samples=c.bound_samples, generator=gen).cpu())
                else:
                    bound.append(model.elbo(xb, hb, generator=gen).cpu())
                    iwae.append(model.iwae_bound(xb, hb, k=c.iwae_k, generator=gen).cpu())
        bound = torch.cat(bound).double()
        np.save(ctx.out / "log_probs.npy", bound.numpy())
        s = summarize(bound, dims=int(x[0].numel()))
        out.update(bound_nats=s.nats, bound_stderr=s.stderr, bits_per_dim=s.bits_per_dim)
        if iwae:
            iwae = torch.cat(iwae).double()
            np.save(ctx.out / "iwae_log_probs.npy", iwae.numpy())
            si = summarize(iwae, dims=int(x[0].numel()))
            out.update(iwae_nats=si.nats, iwae_stderr=si.stderr, iwae_bits_per_dim=si.bits_per_dim,
                       iwae_gain_nats=si.nats - s.nats)
    # Samples: n_samples per test image, their layer and class back through the classifier (Table 1).
    x, y = test_split(dataset, c.n_images)
    with torch.no_grad():
        feats = clf.features(x.to(ctx.device))
    h, pred = feats[layer].float(), feats["logits"].argmax(1).cpu()
    n, k = len(x), c.n_samples
    context = h.repeat_interleave(k, dim=0)
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = torch.cat([_draw(model, c.family, context[i : i + c.batch_size], gen).cpu()
                             for i in range(0, n * k, c.batch_size)])
    sample_seconds = time.perf_counter() - t0
    s_feats = features_and_logits(clf, samples, layer, ctx.device)
    dist = (s_feats[layer].cpu() - context.cpu()).abs().flatten(1).mean(1).view(n, k)
    sample_pred = s_feats["logits"].argmax(1).view(n, k).cpu()  # the classifier's class for each sample
    agree = (sample_pred == pred[:, None]).float()
    xs = samples.view(n, k, -1).float() / 255.0
    pix = (xs - x.view(n, 1, -1).float() / 255.0).abs().mean(2)
    diversity = (torch.stack([(xs[:, a] - xs[:, b]).abs().mean(1) for a in range(k) for b in range(a + 1, k)]).mean(0)
                 if k >= 2 else torch.full((n,), float("nan")))
    ctx.save_npz("samples.npz", samples=samples.view(n, k, *x.shape[1:]).numpy(), dist=dist.numpy(),
                 agree=agree.numpy(), pred=sample_pred.numpy(), input_pred=pred.numpy(), pixel_l1=pix.numpy(), diversity=diversity.numpy(), test_index=np.arange(n),
                 labels=y.numpy())
    if c.family == "flow":  # Rombach et al.'s swap: what x_i keeps beyond h_i (its residual), decoded with h_j
        m = min(n, SWAP_IMAGES)
        with torch.no_grad():
            v = model.residual(x[:m].to(ctx.device), h[:m])
            grid = torch.stack([model.sample_with_residual(v[i].expand(m, -1), h[:m]).cpu() for i in range(m)])
        ctx.save_npz("swap.npz", images=grid.numpy(), test_index=np.arange(m), labels=y[:m].numpy())
    ctx.log(f"{c.family} {layer}: " + (f"bound {out['bound_nats']:.1f} nats, " if "bound_nats" in out else "")
            + f"IM-S {dist[:, 0].mean():.4g}, diversity {diversity.mean():.4f}")
    return dict(out, family=c.family, layer=layer, im_s=dist[:, 0].mean().item(),
                im_nn=dist.min(1).values.mean().item(),
                im_s_stderr=(dist[:, 0].std() / math.sqrt(n)).item() if n > 1 else None,
                class_agreement=agree.mean().item(), pixel_l1=pix.mean().item(),
                diversity=diversity.mean().item(), sample_seconds=sample_seconds,
                samples_per_second=n * k / max(sample_seconds, 1e-9))


FLOW, VAE, GAN = train_flow_stage, train_vae_stage, train_gan_stage
SUPERVISED_VAE, EVALUATE = train_supervised_vae_stage, evaluate_inverter
STAGES = (FLOW, VAE, GAN, SUPERVISED_VAE, EVALUATE)
TRAIN = {"flow": FLOW, "vae": VAE, "gan": GAN}


# =========================================================================================================
# The section's settings and its plan
# =========================================================================================================


@dataclass(frozen=True)
class InvertersEvaluation:
    n_test: int = EvaluationConfig.n_test  # test images for the bounds
    bound_samples: int = EvaluationConfig.bound_samples
    iwae_k: int = EvaluationConfig.iwae_k
    n_images: int = EvaluationConfig.n_images  # test images whose samples are drawn
    n_samples: int = EvaluationConfig.n_samples

    def __post_init__(self):
        EvaluationConfig(family="flow", n_test=self.n_test, bound_samples=self.bound_samples, iwae_k=self.iwae_k,
                         n_images=self.n_images, n_samples=self.n_samples)


@dataclass(frozen=True, kw_only=True)
class InvertersSettings:
    """The ``inverters`` section: on which datasets and layers (None: §5.1's own, so an override of §5.1's
    layers carries over; given, they must be among §5.1's), and each family's model."""

    datasets: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    families: tuple[str, ...] = FAMILIES
    flow: FlowSettings = field(default_factory=FlowSettings)
    vae: VAESettings = field(default_factory=VAESettings)
    gan: GANSettings = field(default_factory=GANSettings)
    supervised_vae: SupervisedVAESettings = field(default_factory=SupervisedVAESettings)
    evaluation: InvertersEvaluation = field(default_factory=InvertersEvaluation)
    # Extra seeds of every inverter with a bound (PixelCNN++, flow, VAE): the seed-to-seed spread of their
    # bounds, the part of a difference between families that the test-set standard error does not see.
    # Per layer through ``per_layer`` (e.g. {fc3: {replicate_seeds: [1]}}) where the budget is short.
    replicate_seeds: tuple[int, ...] = ()
    per_layer: dict[str, dict] = field(default_factory=dict)  # {layer: partial settings}

    def __post_init__(self):
        if self.datasets is not None:
            if not self.datasets:
                raise ValueError("datasets: give at least one dataset, or leave it out for §5.1's")
            for i, d in enumerate(self.datasets):
                if d not in data.DATASETS:
                    raise ConfigError(f"datasets[{i}]: unknown dataset {d!r}; datasets: {', '.join(data.DATASETS)}")
        if self.layers is not None and not self.layers:
            raise ValueError("layers: give at least one layer, or leave it out for §5.1's")
        for i, f in enumerate(self.families):
            if f not in FAMILIES:
                raise ConfigError(f"families[{i}]: unknown family {f!r}; families: {', '.join(FAMILIES)}")
        if len(set(self.replicate_seeds)) != len(self.replicate_seeds):
            raise ConfigError(f"replicate_seeds: {list(self.replicate_seeds)} repeats a seed; give each once")

    def combinations(self, raw: Mapping) -> list[tuple]:
        """Every (dataset, layer, arch) whose merged settings differ from the section's: validated at load."""
        return [(d, layer, None) for layer in raw.get("per_layer") or {} for d in (self.datasets or [None])]


def inverter_datasets(P: Params) -> tuple[str, ...]:
    """The datasets of the inverters section: its own, or §5.1's when it names none."""
    return P.section("inverters").datasets or P.section("layers").datasets


def inverters_plan(P: Params, dataset: str) -> dict:
    """Refs of the chapter for one dataset: §5.1's classifier and PixelCNN++ results, and per layer each
    family's trained model and evaluation, plus the supervised VAE.

    Returns {"classifier", "pixelcnn": {layer: {"inversion", "nce", "samples"}}, "families": {family: {layer:
    {"model", "evaluation"}}}, "replicates": {layer: {family: {seed: ref}}} (the NCE of a PixelCNN++, the
    evaluation of a flow or VAE, trained with another seed; layers without ``replicate_seeds`` absent),
    "decoder": {layer}, "neighbours": {layer}, "supervised_vae"}."""
    S = P.section("inverters", dataset)
    if "layers" not in P or dataset not in P.section("layers").datasets:
        raise ConfigError(f"inverters: dataset {dataset!r} must also be a §5.1 dataset (layers.datasets: "
                          f"{', '.join(P.section('layers').datasets) if 'layers' in P else 'none'}); "
                          "leave inverters.datasets out to follow §5.1's")
    section_layers = P.section("layers").layers
    layers = S.layers or section_layers
    missing = [layer for layer in layers if layer not in section_layers]
    if missing:
        raise ConfigError(f"inverters.layers: {missing} are not §5.1 layers ({', '.join(section_layers)}); "
                          "leave inverters.layers out to follow §5.1's")
    base = layers_plan(P, dataset)
    clf = base["classifier"]
    ev = S.evaluation
    plan = {"classifier": clf, "families": {f: {} for f in S.families},
            "pixelcnn": {layer: {k: base["layers"][layer][k] for k in ("inversion", "nce", "samples")}
                         for layer in layers}}
    def trained(L, family: str, layer: str, seed: int | None = None) -> dict:
        """The refs of one family's model at ``layer`` (with another ``seed`` for a replicate) and its evaluation."""
        config = {**asdict(getattr(L, family)), "layer": layer, **({} if seed is None else {"seed": int(seed)})}
        model = ref(TRAIN[family], config, classifier=clf)
        return {"model": model, "evaluation": ref(EVALUATE, {"family": family, **asdict(ev)}, classifier=clf,
                                                  model=model)}

    plan["replicates"] = {}
    for layer in layers:
        L = P.section("inverters", dataset, layer)
        for family in S.families:
            plan["families"][family][layer] = trained(L, family, layer)
        if L.replicate_seeds:
            nce = base["layers"][layer]["nce"]
            own = {"PixelCNN++ (layers.inversion.seed)": base["layers"][layer]["inversion"].config["seed"],
                   **{f"{f}.seed": getattr(L, f).seed for f in S.families if f in BOUNDED}}
            clash = {name: seed for name, seed in own.items() if seed in L.replicate_seeds}
            if clash:
                raise ConfigError(f"inverters.replicate_seeds {list(L.replicate_seeds)} at {layer}: seed "
                                  f"{', '.join(f'{v} is the main model’s ({k})' for k, v in clash.items())}; "
                                  "a replicate needs a seed of its own")
            reps = {"pixelcnn": replicate_nces(L.replicate_seeds, nce.config["n_test"],
                                               base["layers"][layer]["inversion"])}
            for family in [f for f in S.families if f in BOUNDED]:
                reps[family] = {int(seed): trained(L, family, layer, seed)["evaluation"] for seed in L.replicate_seeds}
            plan["replicates"][layer] = reps
    plan["decoder"] = {layer: base["layers"][layer]["decoder"] for layer in layers}  # the MSE baseline
    plan["neighbours"] = {layer: base["layers"][layer]["neighbours"] for layer in layers}  # Table 1's 1NN
    plan["supervised_vae"] = ref(SUPERVISED_VAE, {**asdict(S.supervised_vae), "dataset": dataset,
                                                  "n_test": ev.n_test, "n_images": ev.n_images,
                                                  "n_samples": ev.n_samples})
    return plan
