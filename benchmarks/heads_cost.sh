#!/usr/bin/env bash
# Params, GFLOPs and CPU latency (360x480, batch 1, 2 threads) of every head on resnet18, mobilenet_v3_large
# and the yolov8n graph (plus the yolo11n graph's own head). Writes benchmarks/heads_cost.md and .json files.
# Usage: bash benchmarks/heads_cost.sh [extra segment/benchmark.py flags, e.g. --passes 3]
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results; mkdir -p "$out"
HEADS="segment,segment@attention=scse,unet,unet@attention=scse,unet@attention=cbam,yolov5,yolov5@attention=cbam,lraspp,deeplabv3plus,ocr"
common=(--img-size 360 480 --threads 2 --runs 10 --warmup 3 "$@")
python segment/benchmark.py --backbones resnet18,mobilenet_v3_large --heads "$HEADS" "${common[@]}" --json "$out/heads_torchvision.json" > "$out/heads_torchvision.md"
python segment/benchmark.py --backbones resnet18 --heads "deeplabv3plus@output_stride=8" "${common[@]}" --json "$out/heads_os8.json" > "$out/heads_os8.md"
python segment/benchmark.py --cfg models/yolov8n_seg.yaml --heads "$HEADS" "${common[@]}" --json "$out/heads_yolov8n.json" > "$out/heads_yolov8n.md"
python segment/benchmark.py --cfg models/yolov8n_seg.yaml,models/yolo11n_seg.yaml "${common[@]}" --json "$out/graphs.json" > "$out/graphs.md"
cat "$out"/heads_torchvision.md "$out"/heads_os8.md "$out"/heads_yolov8n.md "$out"/graphs.md
