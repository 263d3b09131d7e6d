"""The paper study (He et al., 2015), in a room of its own: pretraining a ResNet as an image
classifier, its data, the experiments (depth sweeps, the degradation experiment, the small-scale
reproduction) and their reports.

It imports the core (``backbones.specs`` ... ``backbones.engine``); nothing in the core imports
it. Subpackages: ``data`` (classification data: ImageFolder trees, CIFAR-10, the synthetic set),
``pretrain`` (the classifier, a pretraining's settings and its run), ``report`` (parameters and
FLOPs, runs read, the depth report, curves), ``experiments`` (sweep, degradation, reproduce).
"""
