#!/usr/bin/env bash
# The engine checks that need a GPU (docs/scaling.md, "What is verified"): a tiny targeted-LAT run through
# `accelerate launch` with each config of this folder, then a resume, on however many GPUs there are.
#
#   bash benchmarks/accelerate/check.sh OUTDIR
#
# Each run logs to OUTDIR/<name>.log and prints one "=== name: exit N" line; a failing run does not stop the
# others. Expected: ddp, fsdp2 and deepspeed_zero2 exit 0 (zero2 needs `pip install deepspeed`);
# deepspeed_zero3 exits 2 with latkit's one-line refusal.
set -u
out=${1:?usage: check.sh OUTDIR}
py=${PYTHON:-python}
n=${NPROC:-$("$py" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
run() {  # run NAME CONFIG EXTRA...
    local name=$1 cfg=$2 dir=${1%-resume}
    shift 2
    timeout 300 "$py" -m accelerate.commands.launch --config_file "$here/$cfg" --num_processes "$n" \
        -m latkit.cli train recipes/tiny-test.yaml --output "$out/$dir" --no-progress \
        --set train.checkpoint_every=1 "$@" >"$out/$name.log" 2>&1
    echo "=== $name: exit $?"
}
for cfg in ${CONFIGS:-ddp fsdp2_lora deepspeed_zero2 deepspeed_zero3}; do
    run "$cfg" "$cfg.yaml" --set train.steps=2
    # resume the finished run from its last checkpoint (same recipe): loads weights, optimiser, RNG back
    [ -d "$out/$cfg/checkpoints" ] && run "$cfg-resume" "$cfg.yaml" --set train.steps=2 --resume
done
