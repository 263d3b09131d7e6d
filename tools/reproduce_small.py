#!/usr/bin/env python3
"""The paper's two claims at small scale, on a CPU: pretrain R-18/34/50 on the synthetic
classification set, fine-tune Mask R-CNN on shapes from each and from scratch, write both depth
reports and a pretrained-vs-scratch table; then the plain-vs-residual degradation experiment.

    python tools/reproduce_small.py                      # the measured run (docs/pretraining.md)
    python tools/reproduce_small.py --depths 18 34 --no-scratch

Run it again after an interruption: finished steps are skipped, interrupted ones resumed.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging

from backbones.study.experiments.reproduce import reproduce_small


def main() -> None:
    quiet_third_party_warnings()  # each step's tool quiets its own processes
    # The depth reports' progress over the runs (a line every 5 s with an ETA) on stderr.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-root", default="output/reproduce_small")
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 34, 50])
    parser.add_argument("--pretrain-iters", type=int, default=600, help="per depth")
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining batch")
    parser.add_argument("--degradation-iters", type=int, default=800, help="per net")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per step")
    parser.add_argument(
        "--no-scratch", action="store_true", help="skip the detectors trained from scratch"
    )
    parser.add_argument(
        "--detector-max-iter", type=int, default=None, help="SOLVER.MAX_ITER of the detectors"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the detectors"
    )
    args = parser.parse_args()
    result = reproduce_small(
        args.output_root,
        depths=args.depths,
        pretrain_iters=args.pretrain_iters,
        batch_size=args.batch_size,
        degradation_iters=args.degradation_iters,
        num_gpus=args.num_gpus,
        scratch=not args.no_scratch,
        detector_max_iter=args.detector_max_iter,
        detector_opts=args.opts,
    )
    raise SystemExit(1 if result.failed else 0)


if __name__ == "__main__":
    main()
