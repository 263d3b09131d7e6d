#!/usr/bin/env python3
"""Convert ResNet weights (torchvision, timm, MSRA/FAIR Caffe2, Detectron2) to a Detectron2 file.

The source is read from the file's content. Writes DST (``.pkl``: Detectron2's model-zoo layout,
loadable by any Detectron2; ``.pth``: the same through ``torch.save``) atomically, and prints the
config lines that go with it (also stored in the file)::

    tools/convert_weights.py resnet50-11ad3fa6.pth output/R-50-torchvision.pkl
    tools/convert_weights.py R-101.pkl output/R-101.pkl
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import io
import os
import sys
import time

from tqdm import tqdm

from backbones.weights import (
    WeightsFormatError,
    read_weights,
    summarise_names,
    write_detectron2_checkpoint,
)


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_warnings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", help="weights file: .pth/.pt/.bin/.safetensors/.pkl/.pyth")
    parser.add_argument("dst", help="output file: .pkl (Detectron2 zoo layout) or .pth")
    parser.add_argument(
        "--trusted",
        action="store_true",
        help="unpickle any object in SRC (runs code from the file: only for files you trust)",
    )
    args = parser.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        parser.error("DST must differ from SRC")
    start = time.perf_counter()
    size = os.path.getsize(args.src) if os.path.isfile(args.src) else 0

    def reading(f):
        """The whole file in memory, read in chunks behind a progress bar."""
        buffer = io.BytesIO()
        with tqdm(total=size, unit="B", unit_scale=True, desc="read", disable=size < 2**24) as bar:
            for chunk in iter(lambda: f.read(2**22), b""):
                buffer.write(chunk)
                bar.update(len(chunk))
        buffer.seek(0)
        return buffer

    try:
        weights = read_weights(args.src, trusted=args.trusted, progress=reading)
    except (FileNotFoundError, WeightsFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.src}: {weights.source}, {len(weights.state)} tensors", file=sys.stderr)
    if weights.unused:
        left_out = summarise_names(weights.unused, limit=8)
        print(f"  left out (no ResNet counterpart): {left_out}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    lines = write_detectron2_checkpoint(
        weights,
        args.dst,
        progress=lambda items: tqdm(items, desc="convert", unit="tensor", leave=False),
    )
    print(f"wrote {args.dst} in {time.perf_counter() - start:.1f} s; config:", file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
