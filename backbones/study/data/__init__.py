"""Classification data for pretraining: an ImageFolder tree and its checks, CIFAR-10's batches,
the synthetic set of textured shapes (generated on first use), augmentation."""
