"""Does the spatial MSE decoder still underfit? The decoder of each layer of the quick MNIST classifier,
trained with the quick set's settings, its training and test MSE: the current decoder (spatial maps
up-sampled by transposed convolutions) against the one it replaced (the map resized bilinearly to the image
and refined by two 3x3 convolutions, reimplemented here as the baseline), in one run.

    python bench/mse_decoder.py [--params quick] [--dataset mnist] [--n-eval 2000]

The classifier comes from the parameter set's stage cache (computed if missing). Writes
bench/results/mse_decoder-<set>-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion import data, pipeline  # noqa: E402
from inversion.models.decoders import DecoderConfig, MSEDecoder, evaluate_mse, train_decoder  # noqa: E402
from inversion.pipeline.common import features, first, load_classifier, load_split, test_split  # noqa: E402
from inversion.pipeline.layers import CLASSIFIER  # noqa: E402
from inversion.pipeline.cache import ref  # noqa: E402
from inversion.reports.common import markdown_table  # noqa: E402


class ResizeDecoder(MSEDecoder):
    """The replaced spatial decoder: 3x3 conv at the map's resolution, bilinear resize, two 3x3 convs."""

    def __init__(self, context_shape, image_shape, n_filters):
        super().__init__((1,), image_shape, n_filters)  # buffers, output layer; the rest is rebuilt below
        self.context_shape = tuple(context_shape)
        self.config = dict(context_shape=list(context_shape), image_shape=list(image_shape), n_filters=n_filters)
        self.h_mean = torch.zeros(context_shape[0], 1, 1)
        self.h_std = torch.ones(context_shape[0], 1, 1)
        for name in ("fc", "up1", "conv1", "up2", "conv2"):
            delattr(self, name)
        self.conv_in = nn.Conv2d(context_shape[0], n_filters, 3, padding=1)
        self.conv1 = nn.Conv2d(n_filters, n_filters, 3, padding=1)
        self.conv2 = nn.Conv2d(n_filters, n_filters, 3, padding=1)

    def forward(self, h):
        h = (self._check_contexts(h).float() - self.h_mean) / self.h_std
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        y = F.interpolate(act(self.conv_in(h)), size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(act(self.conv2(act(self.conv1(y))))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="quick")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--n-eval", type=int, default=2000, help="training and test images the MSEs are measured on")
    args = ap.parse_args(argv)
    P = pipeline.load_params(args.params)
    S = P.section("layers", args.dataset)
    cache = pipeline.Cache(P, compute=True)
    clf = load_classifier(cache.result(ref(CLASSIFIER, {**asdict(S.classifier), "dataset": args.dataset})), "cpu")
    rows, t0 = [], time.time()
    for layer in S.layers:
        D = P.section("layers", args.dataset, layer).decoder
        cfg = DecoderConfig(**{k: getattr(D, k) for k in DecoderConfig.__dataclass_fields__})
        x_tr = first(load_split(args.dataset, "train")[0], D.n_train)
        h_tr = features(clf, x_tr, layer, "cpu")
        x_va = load_split(args.dataset, "valid")[0][: D.n_valid]
        valid = (features(clf, x_va, layer, "cpu"), x_va) if cfg.eval_every else None
        x_te, _ = test_split(args.dataset, args.n_eval)
        h_te = features(clf, x_te, layer, "cpu")
        shape = tuple(h_tr.shape[1:])
        kinds = [("current", MSEDecoder)] + ([("replaced (resize)", ResizeDecoder)] if len(shape) == 3 else [])
        for name, cls in kinds:
            torch.manual_seed(cfg.seed)
            dec = cls(shape, data.IMAGE_SHAPES[args.dataset], cfg.n_filters)
            with tempfile.TemporaryDirectory() as work:
                t = time.time()
                res = train_decoder(dec, h_tr, x_tr, work, cfg, valid=valid, progress=False)
                seconds = time.time() - t
            dec.eval()
            rows.append(dict(layer=layer, decoder=name, context=list(shape), steps=res.step,
                             train_mse=evaluate_mse(dec, h_tr[: args.n_eval], x_tr[: args.n_eval]),
                             test_mse=evaluate_mse(dec, h_te, x_te), seconds=seconds,
                             parameters=sum(p.numel() for p in dec.parameters())))
            print(rows[-1], flush=True)
    out = REPO / "bench" / "results" / f"mse_decoder-{args.params}-{args.dataset}"
    out.with_suffix(".json").write_text(json.dumps(dict(rows=rows, wall_s=time.time() - t0), indent=1))
    lines = ["# The MSE decoder per layer: training and test MSE", "",
             f"`python bench/mse_decoder.py --params {args.params} --dataset {args.dataset} --n-eval {args.n_eval}`", "",
             markdown_table(["layer", "decoder", "h", "steps", "train MSE", "test MSE", "parameters", "train s"],
                            [(r["layer"], r["decoder"], "×".join(map(str, r["context"])), r["steps"],
                              f"{r['train_mse']:.4f}", f"{r['test_mse']:.4f}", f"{r['parameters']:,}",
                              f"{r['seconds']:.0f}") for r in rows])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
