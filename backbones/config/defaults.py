"""Config defaults for the ``backbones`` plugin: one node of its own, ``BACKBONES``."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

OPTIMIZERS = ("SGD", "AdamW")
TRAIN_LOADERS = ("resumable", "detectron2")
BAD_IMAGES = ("stop", "skip")


def add_backbones_config(cfg: CN) -> CN:
    """Add the ``BACKBONES`` node to ``cfg`` (in place; calling twice is harmless).

    ``MODEL.RESNETS.*``, ``MODEL.FPN.*`` and ``SOLVER.*`` keep their Detectron2 meaning; only
    knobs that Detectron2 lacks live here, in a node no other plugin writes to.

    Returns:
        the same ``cfg``, for chaining.
    """
    if "BACKBONES" in cfg:
        return cfg
    cfg.BACKBONES = CN()
    # Memory format of the backbone's weights and activations. Options:
    #   "channels_last": NHWC, several times faster convolutions on CPU (oneDNN) and tensor cores;
    #   "contiguous": NCHW, Detectron2's default layout.
    # Outputs are numerically the same either way (to float rounding).
    cfg.BACKBONES.MEMORY_FORMAT = "channels_last"
    # Zero-initialise the scale of the last norm layer in every residual block, so each block
    # starts as the identity (Goyal et al., 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
    # Helps training from scratch; no effect when weights are loaded. Options: True, False.
    cfg.BACKBONES.ZERO_INIT_RESIDUAL = False
    # The ResNet stem. Options:
    #   "basic": one 7x7 stride-2 conv (stem.conv1), Detectron2's and torchvision's;
    #   "deep": three 3x3 convs (stem.conv1..3, the first stride 2), ResNet-C/D ("Bag of Tricks",
    #   He et al., 2019), timm's resnet*d. Both end in a 3x3 stride-2 max-pool.
    cfg.BACKBONES.STEM_TYPE = "basic"
    # Channels of the deep stem's first two convs (its third gives MODEL.RESNETS.STEM_OUT_CHANNELS).
    # Options: a positive integer; 32 in timm's ResNet-D. Unused by the basic stem.
    cfg.BACKBONES.STEM_WIDTH = 32
    # ResNet-D's projection shortcuts: a 2x2 average pool, then a stride-1 1x1 conv (timm's
    # avg_down=True); same keys (resN.0.shortcut.*). Options: False (a strided 1x1 conv), True.
    cfg.BACKBONES.AVG_DOWN = False
    # Shortcut connections. Options: True (ResNet); False (the paper's plain net, Sec. 4.1: the
    # same convs and norms with no shortcut at all, for the degradation experiment).
    cfg.BACKBONES.RESIDUAL = True
    # Output stride of the ResNet. Options: 0 (from MODEL.RESNETS.RES5_DILATION: 32, or 16 with
    # dilation 2); 32; 16 (res5 dilated by 2); 8 (res4 dilated by 2, res5 by 4), as DeepLab and
    # MMDetection's `dilations`. A RES5_DILATION that contradicts it is an error naming both.
    cfg.BACKBONES.OUTPUT_STRIDE = 0
    # Stochastic depth (Huang et al., 2016): the rate at which the last block's residual branch is
    # dropped in training, earlier blocks linearly less (timm's drop_path_rate). Options: a
    # number in [0, 1); 0 turns it off. Identity in eval.
    cfg.BACKBONES.DROP_PATH_RATE = 0.0
    # Gradient checkpointing: the stages whose blocks are recomputed in the backward pass instead
    # of keeping their activations (less memory, the same gradients, ~1/3 more compute). Options:
    # a list of stage names among res2, res3, res4, res5; [] for none.
    cfg.BACKBONES.GRAD_CHECKPOINTING = []
    # Blocks per stage instead of MODEL.RESNETS.DEPTH, for depth ablations beyond the table.
    # Options: [] (use MODEL.RESNETS.DEPTH) or four positive integers, e.g. [2, 3, 4, 2].
    cfg.BACKBONES.STAGE_BLOCKS = []
    # The block of BACKBONES.STAGE_BLOCKS. Options: "bottleneck", "basic" (unused without them).
    cfg.BACKBONES.BLOCK_TYPE = "bottleneck"
    # Context blocks inside the residual blocks (backbones.modeling.plugins; docs/family.md): a
    # list of dicts, each one plugin type placed in every block of its stages, e.g. GCNet's
    #   PLUGINS: [{type: gc, stages: [res3, res4, res5], position: after_conv3, ratio: 0.0625}]
    # Keys: type: "se" (squeeze-excitation), "gc" (global context), "non_local" (non-local);
    # stages: names among res2..res5 (stages the backbone builds); position: "after_conv1",
    # "after_conv2", "after_conv3" (the default; basic blocks have no conv3); ratio: the inner
    # width as a fraction of the channels (default 1/16 for se and gc, 1/2 for non_local).
    # Options: [] (none) or such a list.
    cfg.BACKBONES.PLUGINS = []
    # The optimizer of backbones.engine.Trainer. Options:
    #   "SGD": Detectron2's (SOLVER.BASE_LR, MOMENTUM, NESTEROV, WEIGHT_DECAY, ...);
    #   "AdamW": Loshchilov & Hutter (2019) with SOLVER.BASE_LR and SOLVER.WEIGHT_DECAY (norm and
    #   bias decay, bias LR factor and gradient clipping as in SOLVER.*). Learns faster from
    #   scratch on small data (measured on shapes, batch 4, after 200 iterations: box AP 9.3 with
    #   AdamW at LR 1e-3, 3.5 with SGD at LR 0.02).
    cfg.BACKBONES.OPTIMIZER = "SGD"
    # Custom COCO-format datasets, registered (backbones.data.register_datasets_from_cfg) before
    # models and data loaders are built, so that DATASETS.TRAIN / DATASETS.TEST can name them.
    # A list of [name, json_file, image_root] triples, e.g. in YAML:
    #   COCO_DATASETS: [[my_train, data/train.json, data/images], [my_val, data/val.json, ...]]
    # tools/train_net.py --dataset NAME JSON IMAGE_ROOT appends to it.
    cfg.BACKBONES.COCO_DATASETS = []
    # Input settings (INPUT.FORMAT, MODEL.PIXEL_MEAN, MODEL.PIXEL_STD, MODEL.RESNETS.STRIDE_IN_1X1)
    # from the source of MODEL.WEIGHTS (backbones.config.apply_input_settings). Options:
    #   "auto": keys the config files and command line leave unset take the weights' values; a
    #   key set to another value is an error naming both;
    #   "off": keep the config as written (for those who know the weights want otherwise).
    cfg.BACKBONES.INPUT_FROM_WEIGHTS = "auto"
    # Weight files are read without running code: torch.load(weights_only=True) for .pth, an
    # unpickler admitting only numpy arrays and containers for .pkl. Options: False; True to
    # unpickle anything (runs code from the file: only for files you trust).
    cfg.BACKBONES.TRUST_WEIGHTS_FILE = False
    # The training data loader. Options: "resumable": every batch and its augmentations are a
    #   function of (SEED, iteration), so --resume continues exactly and N processes read what
    #   one process with N times the batch reads (backbones.data.loader; DATALOADER.SAMPLER_TRAIN
    #   TrainingSampler or RepeatFactorTrainingSampler); "detectron2": Detectron2's loader (every
    #   sampler, but a resumed run sees other images than the run it continues).
    cfg.BACKBONES.TRAIN_LOADER = "resumable"
    # A training image that cannot be read (a corrupt or vanished file, a size other than the
    # JSON's) in the resumable loader. Options: "stop": the training stops with one error naming
    #   the file, its dataset and index; "skip": it is skipped (another image takes its place,
    #   drawn from the same seed), each one logged with the count so far.
    cfg.BACKBONES.BAD_IMAGES = "stop"
    # A tensor whose shape differs between MODEL.WEIGHTS and the model is an error, except under
    # these name prefixes, where it is skipped and reported. E.g. fine-tuning a COCO detector on
    # other classes: ["roi_heads.box_predictor", "roi_heads.mask_head.predictor"].
    cfg.BACKBONES.SKIP_MISMATCHED = []
    return cfg
