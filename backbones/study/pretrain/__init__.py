"""Pretraining a ResNet as an image classifier (He et al., 2015, Sec. 3.4): the classifier
(``classifier``), a run's settings and outputs (``run``), and the run itself (``train``), which
leaves a weights file for ``make_resnet(weights=...)`` and ``MODEL.WEIGHTS``."""
