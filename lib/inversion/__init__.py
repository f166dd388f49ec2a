"""Inverting supervised representations with conditional PixelCNN++ (Nash, Kushman & Williams, 2019).

Modules, one job each:
  data         datasets (MNIST, Fashion-MNIST, affNIST, SVHN, CIFAR-10), checksum-verified sources
  models       the trainable models, one file each, each with its config dataclass:
    .classifier  the supervised CNNs whose layers are inverted (Appendix A), and their training
    .pixelcnn    conditional PixelCNN++ p(x | h): the network, its likelihoods, its training
    .sampling    every sampler of the PixelCNN++ (naive, fixed point, cached incremental)
    .decoders    the MSE up-sampling decoder baseline x_hat = f(h)
  bounds       the negative cross-entropy (NCE) bound on I(x; h), with standard errors
  estimators   binning, KDE and Kraskov estimators of Appendix B
  training     the shared resumable training loop (atomic checkpoints, tqdm progress)
"""

__version__ = "0.1.0"
