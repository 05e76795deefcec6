#!/usr/bin/env bash
# Compare the classifier's two starts and the lung-channel ablation at one budget, in parallel
# on one GPU (each run is the bundle's own command):
#   scratch   training_classifier from random weights, lung channel on
#   ssl       pretraining (SimCLR on the train+val images), then training_classifier from it
#   nolung    training_classifier from random weights, zeros in place of the lung map
# Each classifier is then evaluated on the test split (evaluating_classifier). The checkpoint
# of each run is chosen on validation (within-source ROC AUC), never on test, and so is the
# start to keep: see summary.json.
#
#   DATASET_DIR=../shared/data RUN_DIR=runs/compare CLS_EPOCHS=40 SSL_EPOCHS=100 \
#     bash scripts/compare_starts.sh
# Other settings: WORKERS (data loader workers per run, default 4; SSL_WORKERS for the
# pretraining and the classifier trained from it), PYTHON (default python3),
# TIME_LIMIT (seconds each run may take before it is stopped; its best checkpoint so far is
# still exported and evaluated), EXTRA (more overrides for every
# bundle command, e.g. --cls_learning_rate 3e-4), RUNS (which of the three, default all)..
set -uo pipefail

DATASET_DIR=${DATASET_DIR:-../shared/data}
RUN_DIR=${RUN_DIR:-runs/compare}
CLS_EPOCHS=${CLS_EPOCHS:-40}
SSL_EPOCHS=${SSL_EPOCHS:-100}
WORKERS=${WORKERS:-4}
SSL_WORKERS=${SSL_WORKERS:-$WORKERS}
PYTHON=${PYTHON:-python3}
TIME_LIMIT=${TIME_LIMIT:-86400}
EXTRA=${EXTRA:-}
RUNS=${RUNS:-scratch ssl nolung}

C=bundle/configs
CLASSIFIER="['$C/common.yaml','$C/train_classifier.yaml']"
PRETRAIN="['$C/common.yaml','$C/pretrain.yaml']"
EVALUATE="['$C/common.yaml','$C/train_segmentation.yaml','$C/train_classifier.yaml','$C/build_index.yaml','$C/evaluate.yaml']"

mkdir -p "$RUN_DIR"
bundle() {  # bundle <run key> <config files> <overrides...>, stopped after TIME_LIMIT seconds
    local key=$1 configs=$2
    shift 2
    timeout "$TIME_LIMIT" "$PYTHON" -m monai.bundle run "$key" --config_file "$configs" \
        --meta_file bundle/configs/metadata.json --logging_file bundle/configs/logging.conf \
        --dataset_dir "$DATASET_DIR" --num_workers "$WORKERS" $EXTRA "$@"
}
train() {  # train <name> <overrides...>
    local name=$1
    shift
    bundle training_classifier "$CLASSIFIER" \
        --cls_output_dir "$RUN_DIR/$name" --cls_num_epochs "$CLS_EPOCHS" "$@" \
        >"$RUN_DIR/$name.log" 2>&1
    # A run stopped by TIME_LIMIT still has its best checkpoint: export it.
    [ -f "$RUN_DIR/$name/classifier.pt" ] || [ ! -f "$RUN_DIR/$name/classifier_best.pt" ] || \
        "$PYTHON" -c "import sys; from monai_app.weights import export_half_precision as e; e(sys.argv[1], sys.argv[2])" \
            "$RUN_DIR/$name/classifier_best.pt" "$RUN_DIR/$name/classifier.pt"
}
evaluate() {  # evaluate <name> <overrides...>
    local name=$1
    shift
    [ -f "$RUN_DIR/$name/classifier.pt" ] || return 0
    bundle evaluating_classifier "$EVALUATE" \
        --output_dir "$RUN_DIR/eval_$name" --cls_model_file "$RUN_DIR/$name/classifier.pt" "$@" \
        >"$RUN_DIR/eval_$name.log" 2>&1
}

wanted() { [[ " $RUNS " == *" $1 "* ]]; }
# scratch and nolung name their start: by default training_classifier takes runs/pretraining's backbone if present.
wanted scratch && (train scratch --cls_backbone_init null && evaluate scratch) &
wanted ssl && (WORKERS=$SSL_WORKERS
 bundle pretraining "$PRETRAIN" --ssl_output_dir "$RUN_DIR/ssl_pretraining" \
     --ssl_num_epochs "$SSL_EPOCHS" >"$RUN_DIR/ssl_pretraining.log" 2>&1
 [ -f "$RUN_DIR/ssl_pretraining/backbone.pt" ] || "$PYTHON" -c "import sys; from monai_app.handlers import ResumeFromCheckpoint; from monai_app.networks.contrastive import export_backbone; export_backbone(ResumeFromCheckpoint(sys.argv[1], {}).latest(), sys.argv[1] + '/backbone.pt')" "$RUN_DIR/ssl_pretraining"
 train ssl --cls_backbone_init "$RUN_DIR/ssl_pretraining/backbone.pt" && evaluate ssl) &
wanted nolung && (train nolung --cls_backbone_init null --cls_lung_channel false && evaluate nolung --cls_lung_channel false) &
wait

"$PYTHON" - "$RUN_DIR" <<'EOF'
import json, sys
from pathlib import Path
from monai_app.handlers import read_history

run_dir = Path(sys.argv[1])
summary = {}
for name in ("scratch", "ssl", "nolung"):
    history_file = run_dir / name / "history.jsonl"
    if not history_file.is_file():
        summary[name] = None
        continue
    history = read_history(history_file)
    best = max(history, key=lambda h: h.get("val_auc") or 0.0)
    metrics_file = run_dir / f"eval_{name}" / "metrics.json"
    test = json.loads(metrics_file.read_text())["classifier"] if metrics_file.is_file() else None
    summary[name] = {"epochs_run": len(history), "best_epoch": best["epoch"], "best_val_auc_within_source": best["val_auc"],
                     "seconds": history[-1]["seconds"], "test": test}
starts = {k: v for k, v in summary.items() if k in ("scratch", "ssl") and v}
summary["kept_start"] = max(starts, key=lambda k: starts[k]["best_val_auc_within_source"]) if starts else None
(run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: (v if not isinstance(v, dict) else {x: y for x, y in v.items() if x != "test"}) for k, v in summary.items()}, indent=1))
EOF
