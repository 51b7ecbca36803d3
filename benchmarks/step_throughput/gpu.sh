#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, in two parts that each fit in ten minutes on one H100.
#
#   bash benchmarks/step_throughput/gpu.sh OUTDIR aims      # only the issue's two aims (jailbreak + mid sites):
#                                                           # fits one 10-minute device call with its start
#   bash benchmarks/step_throughput/gpu.sh OUTDIR batches   # batches 16 and 32 (the rest of core)
#   bash benchmarks/step_throughput/gpu.sh OUTDIR core      # reference vs latkit on a Llama-3-8B shape; memory
#   bash benchmarks/step_throughput/gpu.sh OUTDIR switches  # gradient checkpointing, eager attention, torch.compile
#   bash benchmarks/step_throughput/gpu.sh OUTDIR engines   # accelerate configs of benchmarks/accelerate (check.sh)
#
# Every run writes OUTDIR/<name>.json and appends its stderr to OUTDIR/log.txt; a run that fails or overruns its
# time limit is logged and the next one still runs. SHAPE / DEVICE override the model shape and device (e.g.
# SHAPE=tiny DEVICE=cpu to check the commands on a laptop).
set -u
out=${1:?usage: gpu.sh OUTDIR aims|batches|core|switches|engines}
part=${2:?usage: gpu.sh OUTDIR aims|batches|core|switches|engines}
shape=${SHAPE:-llama3-8b}
dev=${DEVICE:-cuda}
py=${PYTHON:-python}
mkdir -p "$out"
log="$out/log.txt"

bench() {  # bench NAME SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$py" -m benchmarks.step_throughput --shape "$shape" --device "$dev" "$@" \
        --output "$out/$name.json" >/dev/null 2>>"$log"
    echo "=== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
}

# the reference's Llama-3 jailbreak batch shape: 8 examples (16 harmful/refusal rows + 8 benign rows),
# prompts 112-128 and completions 48-64 tokens, 16 PGD steps, LoRA r=8 on all linear layers, bf16
common=(--batch-size 8 --prompt-len 128 --completion-len 64 --jitter 16 --pgd-steps 16)
smoke() {
    bench tiny_smoke 120 --pgd-steps 2 --batch-size 2 --prompt-len 16 --completion-len 8 --jitter 2 --repeats 1 \
        --sites mid --compare reference latkit latkit+prefix+share latkit+bf16 latkit+sign latkit+eager latkit+ckpt \
        --shape tiny
}
aims() {
    bench llama3_8b_jailbreak 200 "${common[@]}" --sites jailbreak --repeats 3 \
        --compare reference+bf16 latkit+bf16 latkit+share+bf16
    bench llama3_8b_mid 160 "${common[@]}" --sites mid --repeats 3 \
        --compare reference+bf16 latkit+bf16 latkit+prefix+share+bf16
}
batches() {
    for b in 16 32; do
        bench "llama3_8b_batch$b" 110 --batch-size "$b" --prompt-len 128 --completion-len 64 --jitter 16 \
            --pgd-steps 4 --sites jailbreak --repeats 1 --compare reference+bf16 latkit+share+bf16
    done
}
case $part in
aims)
    smoke
    aims
    ;;
batches)  # the smoke run and the larger batches: the rest of `core` after `aims`
    smoke
    batches
    ;;
core)
    smoke
    aims
    batches
    ;;
switches)
    bench llama3_8b_long_ckpt 180 --batch-size 2 --prompt-len 1024 --completion-len 512 --jitter 64 --pgd-steps 4 \
        --sites mid --repeats 2 --compare latkit+prefix+share+bf16 latkit+prefix+share+bf16+ckpt
    bench llama3_8b_attention 120 "${common[@]}" --pgd-steps 4 --sites mid --repeats 2 \
        --compare latkit+bf16 latkit+bf16+eager
    bench llama3_8b_compile 240 "${common[@]}" --pgd-steps 4 --sites mid --repeats 2 \
        --compare latkit+prefix+share+bf16 latkit+prefix+share+bf16+compile
    ;;
engines)  # DDP / FSDP2 / DeepSpeed ZeRO-2 (and the ZeRO-3 refusal) through accelerate launch, tiny model
    bash "$(dirname "$0")/../accelerate/check.sh" "$out/engines"
    ;;
*)
    echo "unknown part $part (aims | batches | core | switches | engines)" >&2
    exit 2
    ;;
esac
