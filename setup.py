"""Setup for ``backbones``: the ResNet family and FPN for Detectron2 (He et al., 2015)."""

from setuptools import find_packages, setup

setup(
    name="backbones",
    version="0.1.0",
    description="ResNet / ResNeXt backbones with FPN for Detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=["backbones", "backbones.*"]),
    # The reference figures of the depth report (the paper's Table 8, the model zoos).
    package_data={"backbones.study.report": ["references.yaml"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        # No PyPI release: tools/setup_env.py installs a clean build unless one is importable.
        "detectron2",
        "fvcore>=0.1.5,<0.1.6",
        "pycocotools>=2.0.2",
        "faster-coco-eval>=1.6",
        "opencv-python-headless",
        "matplotlib",
        "numpy",
    ],
    extras_require={
        # torch.onnx.export (the dynamo exporter) needs onnx and onnxscript.
        "export": ["onnx>=1.16", "onnxscript>=0.2"],
        # timm only to write timm checkpoints in tests; onnxruntime to run exported graphs.
        "test": [
            "pytest>=7",
            "pytest-xdist",
            "timm>=1.0",
            "onnx>=1.16",
            "onnxscript>=0.2",
            "onnxruntime>=1.18",
        ],
    },
)
