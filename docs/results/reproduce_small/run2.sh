#!/bin/bash
# Second half, as run: R-34 after R-18's fine-tune, R-50 beside them on the other core.
set -x
cd /work/main
export OMP_NUM_THREADS=1
R=output/reproduce_small
S="--synthetic-root /tmp/synth_default --num-classes 10"
PY=.venv/bin/python
pre() { date; $PY tools/pretrain_classifier.py --depth $1 --max-iter 600 --batch-size 64 --eval-period 300 --resume --output $R/pretrain/r$1 $S norm BN stride_in_1x1 False > $R/pretrain_r$1.log 2>&1; date; }
ft() { date; $PY tools/train_net.py --config-file configs/mrcnn_r$1_shapes.yaml --resume MODEL.WEIGHTS $R/pretrain/r$1/model_final.pth OUTPUT_DIR $R/pretrained/mrcnn_r$1_shapes > $R/finetune_r$1.log 2>&1; date; }
if [ "$1" = 50 ]; then pre 50; ft 50; else while pgrep -f "mrcnn_r18_shapes.yaml" > /dev/null; do sleep 10; done; pre 34; ft 34; fi
echo DONE $1; date
