"""Pretraining a ResNet as an image classifier (He et al., 2015, Sec. 3.4) on the detection
training framework: the classifier, a model returning a loss dict (``classifier``), the paper's
CIFAR-10 nets as classifiers (``cifar``), its config (``config``), the hooks it adds
(``hooks``), a run's settings and outputs (``run``), and the trainer and the run itself
(``train``), whose checkpoints load with ``make_resnet(weights=...)`` and as ``MODEL.WEIGHTS``."""
