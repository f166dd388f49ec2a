"""Inverting supervised representations with conditional PixelCNN++ (Nash, Kushman & Williams, 2019).

The book's data flow is parameter set -> plan -> stages -> cache -> chapter; the packages follow it, and
imports run one way, down this list (tests/test_layout.py checks it):

  pipeline     parameter sets (validated), the plans of each chapter, its stages, the content-addressed cache,
               the command line (python -m inversion.pipeline; inversion.stages is its old name)
  reports      stage results -> typed summaries, claims with stated criteria, figures, tables, the scrubber
  models       the trainable models, one file each with its config dataclass: classifier, pixelcnn,
               sampling (every sampler of the PixelCNN++), decoders
  training     the shared resumable training loop (atomic checkpoints, tqdm progress)
  data         datasets (MNIST, Fashion-MNIST, affNIST, SVHN, CIFAR-10), checksum-verified sources
  bounds       the negative cross-entropy (NCE) bound on I(x; h), with standard errors
  estimators   binning, KDE and Kraskov estimators of Appendix B
  digit_geometry  position, orientation and ink of a sample against its input (§5.2)
  paper        every number and quote of the paper the book compares with
  atomic       the one atomic file writer;  provenance: commit, device, software, date of a result
"""

__version__ = "0.1.0"
