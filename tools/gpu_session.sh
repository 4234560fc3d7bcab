#!/usr/bin/env bash
# All the GPU work of one session on a lent GPU machine, in one call (see tools/README.md).
#
#   bash tools/gpu_session.sh [check] [bench] [train] [eval]     (no argument: all four, in that order)
#
#   check  the CUDA tests (tests/test_cuda.py) and the backends' parity tests
#   bench  benchmarks/speed.py --device cuda --save: HD and 4K, fp32 and fp16, MobileNetV2 and ResNet-50,
#          the original implementation first in each block (its wheel must travel in .whl/); then
#          benchmarks/compose.py: the full-resolution composition, PyTorch against the Triton kernel
#   train  configs/gpu_refine.toml for TRAIN_MINUTES minutes; the weights come back as fp16 safetensors
#   eval   the held-out accuracy of the new weights next to the shipped ones, and the example pair matted
#
# Environment: OUT (results; the device tool sets it), CORPUS (default corpus/), TRAIN_MINUTES (default 6),
# TRAIN_CONFIG (default configs/gpu_refine.toml), TRAIN_OPTIONS (extra name=value overrides), DEVICE (cuda;
# cpu runs the script itself as a dry run). At most 8 files come back from $OUT; this script writes 6:
# session.log, bench.md, weights.safetensors, metrics.jsonl, accuracy.txt, example_pha.png.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
CORPUS=${CORPUS:-corpus}
TRAIN_MINUTES=${TRAIN_MINUTES:-6}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/gpu_refine.toml}
TRAIN_OPTIONS=${TRAIN_OPTIONS:-}
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-/tmp/bgmatting_gpu_run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then  # packages the device image lacks, carried as wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(check bench train eval)
status=0
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }

stamp "environment"
command -v nvidia-smi >/dev/null && nvidia-smi -L
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"

for step in "${steps[@]}"; do
    case "$step" in
    check)
        stamp "check: CUDA tests"
        $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fast.py -x || status=1
        ;;
    bench)
        stamp "bench: speed against the original implementation"
        if $PY -c "import BackgroundMattingV2" 2>/dev/null; then
            before=$(ls benchmarks/results 2>/dev/null)
            $PY benchmarks/speed.py --device "$DEVICE" --frames 50 --warmup 10 --save || status=1
            for f in benchmarks/results/*.md; do
                grep -qxF "$(basename "$f")" <<<"$before" || cp "$f" "$OUT/bench.md"
            done
            echo "composition (upsample, paste, clamp): PyTorch against the Triton kernel" | tee -a "$OUT/bench.md"
            $PY benchmarks/compose.py --device "$DEVICE" | tee -a "$OUT/bench.md" || status=1
        else
            echo "the original implementation is not importable: carry its wheel in .whl/ (tools/README.md)"
            $PY -m bgmatting bench --device "$DEVICE" --resolution hd,4k --precision fp32,fp16 \
                --frames 50 --warmup 10 | tee "$OUT/bench.md" || status=1
        fi
        ;;
    train)
        stamp "train: $TRAIN_CONFIG for $TRAIN_MINUTES minutes"
        rm -rf "$RUN"
        # shellcheck disable=SC2086  # TRAIN_OPTIONS is a list of name=value words
        if $PY -m bgmatting.train.trainer "$TRAIN_CONFIG" data_root="$CORPUS" out_dir="$RUN" device="$DEVICE" \
                max_minutes="$TRAIN_MINUTES" $TRAIN_OPTIONS; then
            $PY -c "import sys; from bgmatting.train import export_weights; \
export_weights(sys.argv[1], sys.argv[2])" "$RUN" "$OUT/weights.safetensors" || status=1
            cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl"
        else
            status=1
        fi
        ;;
    eval)
        stamp "eval: held-out accuracy, shipped weights then the new ones"
        weights=()
        [ -f "$OUT/weights.safetensors" ] && weights=("$OUT/weights.safetensors")
        : >"$OUT/accuracy.txt"
        for w in default "${weights[@]}"; do
            arg=(); [ "$w" != default ] && arg=(--weights "$w")
            $PY benchmarks/accuracy.py --corpus "$CORPUS" "${arg[@]}" | tee -a "$OUT/accuracy.txt" || status=1
        done
        w=${weights[0]:-}
        rm -rf "$RUN/example"
        $PY -m bgmatting matte examples/src.jpg --bgr examples/bgr.jpg -o "$RUN/example" --device "$DEVICE" -q \
            --outputs pha ${w:+--weights "$w"} && cp "$(find "$RUN/example" -name '*.png' | head -1)" \
            "$OUT/example_pha.png" || status=1
        ;;
    *)
        echo "unknown step '$step': use check, bench, train or eval"; exit 2 ;;
    esac
done
stamp "done (status $status)"
ls -l "$OUT"
exit $status
