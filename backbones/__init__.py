"""ResNet backbones for Detectron2."""
