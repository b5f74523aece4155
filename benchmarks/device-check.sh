#!/usr/bin/env bash
# The one-shot GPU check: golden cases on CUDA (float32 must pass, bf16 measured), then the bench matrix at
# 832x480, one JSON per run and a summary.md with the target checks. Under 8 minutes on one H100/H200.
#
#   bash benchmarks/device-check.sh [--dry-run] [--wheels DIR] [--results DIR] [--budget SECONDS]
#                                   [--only NAME,NAME] [--python PY] [--archive FILE.tar.gz]
#
#   --dry-run       the same sequence on the CPU with tiny sizes (CI runs this; no GPU needed)
#   --wheels DIR    install the project's dependencies from this folder first (pip --no-index); default:
#                   ./.whl when it exists (real mode only); none: nothing is installed
#   --results DIR   where the JSONs go (default: benchmarks/results/device-<date>-<host>, dry run: a temp dir)
#   --budget S      wall-clock budget of the whole script in seconds (default 470; dry run 1200). A run that
#                   does not fit in what is left is skipped (recorded as such, listed in summary.md); each
#                   run is killed at its own limit or at the end of the budget.
#   --only LIST     run only these steps (names as in the table below); the summary covers the folder
#   --python PY     the interpreter that has torch (default: $PYTHON, else python3)
#   --archive F     also pack the results folder into F (.tar.gz), one file to bring back from the machine
#
# Steps, most important first (a failed run does not stop the others; each writes RESULTS/<name>.json). Each has
# an estimate (one H200 at today's speeds; a step that no longer fits in the budget is skipped, "time budget")
# and its own time limit; all of them add up to about 8 minutes (see benchmarks/README.md):
#   golden            tests/golden on the device: float32 pass/fail, bf16 rel-L2 per case            ~50 s
#   eager-wan         memflow bench --vae wan, 24 chunks, with and without the memory bank, and a
#                     short serial run (DiT beside the decoder vs alone)                               ~60 s
#   compile-lighttae  memflow bench --vae lighttae --compile, 24 chunks                                 ~55 s
#   compile-nographs-lighttae  only when compile-lighttae failed or fell back: --compile-mode default   ~55 s
#   profile           benchmarks/kernel_profile.py: kernel time by kind, launches per steady chunk      ~35 s
#   attention         benchmarks/attention.py: every importable attention kernel at the steady shape
#                     (4680 x 23,400 keys, 12 x 128, bf16): ms, TFLOP/s, error vs float32            ~15 s
#   flat-lighttae     memflow bench --vae lighttae --chunks 200 (ms per chunk over a long stream; the
#                     eager lighttae figures, end to end included)                                     ~110 s
#   compile-wan       memflow bench --vae wan --compile, 16 chunks (+ the serial run)                   ~55 s
#   sma-lighttae      memflow bench --sma --vae lighttae, 16 chunks, with and without the bank          ~30 s
#   fp8-lighttae      --quantization fp8, 16 chunks (only where fp8 runs as real fp8 matmuls)           ~25 s
#   op-count          benchmarks/op_count.py, when the tree has it                                      ~20 s
#   golden-compile    the pipeline golden cases through the compiled DiT (when the tree has a helper)   ~90 s
# Bench runs: 832x480, 4 steps, bf16, random full-size weights; dry run: --preset tiny 64x64, 4 chunks (6 long).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "device-check: $*" >&2; exit 1; }

DRY_RUN=0
WHEELS=""
RESULTS=""
BUDGET=""
ONLY=""
ARCHIVE=""
PY="${PYTHON:-python3}"
CALLER_PWD="$PWD"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --wheels|--results|--budget|--only|--python|--archive)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --wheels) WHEELS="$2" ;; --results) RESULTS="$2" ;; --budget) BUDGET="$2" ;;
                --only) ONLY="$2" ;; --python) PY="$2" ;; --archive) ARCHIVE="$2" ;;
            esac
            shift ;;
        --wheels=*) WHEELS="${1#*=}" ;;
        --results=*) RESULTS="${1#*=}" ;;
        --budget=*) BUDGET="${1#*=}" ;;
        --only=*) ONLY="${1#*=}" ;;
        --python=*) PY="${1#*=}" ;;
        --archive=*) ARCHIVE="${1#*=}" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

START=$SECONDS
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_PWD/$1" ;; esac; }
cd "$ROOT"
[ -f pyproject.toml ] && [ -d src/memflow_cli ] || die "$ROOT is not the memflow-cli repository root"
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (use --python or \$PYTHON)"

if [ -z "$BUDGET" ]; then
    if [ "$DRY_RUN" = 1 ]; then BUDGET=1200; else BUDGET=470; fi
fi
case "$BUDGET" in ''|*[!0-9]*) die "--budget: expected whole seconds, got '$BUDGET'" ;; esac

if [ -z "$RESULTS" ]; then
    if [ "$DRY_RUN" = 1 ]; then
        RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/memflow-device-check.XXXXXX")"
    else
        RESULTS="$ROOT/benchmarks/results/device-$(date +%Y-%m-%d-%H%M)-$(hostname -s 2>/dev/null || echo host)"
    fi
fi
RESULTS="$(absolute "$RESULTS")"
RAW="$RESULTS/raw"
LOGS="$RESULTS/logs"
mkdir -p "$RESULTS" "$RAW" "$LOGS"

# This tree's code, whatever else is installed; no network, no user caches touched.
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
if [ "$DRY_RUN" = 1 ]; then
    # tiny models: one thread is faster than two fighting over a shared 2-core CI machine
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
fi
MEMFLOW=("$PY" -m memflow_cli)

elapsed() { echo $((SECONDS - START)); }
log() { echo "[device-check $(printf '%4d' "$(elapsed)")s] $*" >&2; }

log "repository $ROOT"
log "results    $RESULTS"
[ "$DRY_RUN" = 1 ] && log "dry run: CPU, tiny sizes (the sequence and the files, not the figures)"

# ---------------------------------------------------------------------------------------------- wheels
if [ -z "$WHEELS" ] && [ "$DRY_RUN" = 0 ] && [ -d "$ROOT/.whl" ]; then
    WHEELS="$ROOT/.whl"
fi
if [ -n "$WHEELS" ]; then
    WHEELS="$(absolute "$WHEELS")"
    [ -d "$WHEELS" ] || die "--wheels $WHEELS: no such folder"
    "$PY" benchmarks/summarize.py requirements pyproject.toml > "$RESULTS/requirements.txt"
    log "installing the dependencies from $WHEELS (pip --no-index; torch is the machine's own)"
    if ! "$PY" -m pip install --no-index --find-links "$WHEELS" -r "$RESULTS/requirements.txt" \
            > "$LOGS/pip.log" 2>&1; then
        # one at a time: what is there gets installed, what is missing is named
        log "pip could not install everything at once; trying one requirement at a time (see logs/pip.log)"
        while IFS= read -r req; do
            "$PY" -m pip install --no-index --find-links "$WHEELS" "$req" >> "$LOGS/pip.log" 2>&1 \
                || log "  not installed: $req"
        done < "$RESULTS/requirements.txt"
    fi
else
    log "no wheels folder given: nothing installed (the dependencies must already be importable)"
fi

# ffmpeg carried xz-compressed beside imageio-ffmpeg's wheel without its binary (benchmarks/pack-wheels.sh):
# unpacked outside the results folder, and imageio-ffmpeg pointed at it.
FFMPEG_DIR=""
trap '[ -z "$FFMPEG_DIR" ] || rm -rf "$FFMPEG_DIR"' EXIT
if [ -n "$WHEELS" ] && [ -z "${IMAGEIO_FFMPEG_EXE:-}" ] && compgen -G "$WHEELS/ffmpeg*.xz" > /dev/null; then
    FFMPEG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/memflow-ffmpeg.XXXXXX")"
    EXE="$("$PY" benchmarks/summarize.py unpack-ffmpeg "$WHEELS" "$FFMPEG_DIR")" || die "could not unpack ffmpeg from $WHEELS"
    export IMAGEIO_FFMPEG_EXE="$EXE"
    log "ffmpeg unpacked from $WHEELS to $EXE (IMAGEIO_FFMPEG_EXE)"
fi

# What the runs need: the CLI must start; without imageio-ffmpeg the bench skips the H.264 stage.
NO_VIDEO=()
VIDEO_NOTE=""
if ! "$PY" -c 'import imageio_ffmpeg; imageio_ffmpeg.get_ffmpeg_exe()' >/dev/null 2>&1; then
    NO_VIDEO=(--no-video)
    VIDEO_NOTE="imageio-ffmpeg (or its ffmpeg) missing: --no-video, so end-to-end FPS leave out the H.264 encode"
    log "warning: $VIDEO_NOTE"
fi
if ! HELP="$(COLUMNS=300 NO_COLOR=1 TERM=dumb "${MEMFLOW[@]}" bench --help 2>&1)"; then
    echo "$HELP" | tail -n 20 >&2
    die "'memflow bench --help' does not run: a dependency is missing? Install them with --wheels DIR (benchmarks/README.md)"
fi
has_flag() { grep -Eq -- "(^|[^-[:alnum:]])$1([^-[:alnum:]]|\$)" <<< "$HELP"; }

# ---------------------------------------------------------------------------------------------- device
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
else
    DEVICE=cuda
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2> "$LOGS/cuda.log"; then
        cat "$LOGS/cuda.log" >&2
        die "no CUDA device: torch.cuda.is_available() is False (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')). Use --dry-run on a machine without a GPU."
    fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || true
fi
# The project's own commit: only when ROOT is a repository's top (its own .git, or git's top level is ROOT).
# A tree copied into another repository (a device machine's checkout) would otherwise report that repository's
# HEAD. Else: $MEMFLOW_COMMIT if given, or "unknown"; the content hash of src/ tells trees apart either way.
project_commit() {
    local top
    if [ -e "$ROOT/.git" ] || { top="$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null)" \
            && [ "$(cd "$top" && pwd -P)" = "$(pwd -P)" ]; }; then
        git -C "$ROOT" rev-parse HEAD 2>/dev/null && return 0
    fi
    echo "${MEMFLOW_COMMIT:-unknown}"
}
COMMIT="$(project_commit)"
SOURCE_HASH="$("$PY" benchmarks/summarize.py source-hash src)"
log "commit $COMMIT; src/ content sha256 ${SOURCE_HASH:0:16}…"
FLAGS_FOUND=""
for flag in --compile --quantization --no-overlap; do
    has_flag "$flag" && FLAGS_FOUND="$FLAGS_FOUND $flag"
done
"$PY" - "$DEVICE" "$COMMIT" "$DRY_RUN" "$FLAGS_FOUND" "$SOURCE_HASH" > "$RESULTS/environment.json" 2> "$LOGS/environment.log" <<'PYEOF' || die "could not record the environment (logs/environment.log)"
import json, platform, sys, time
import torch
device, commit, dry_run, flags = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4].split()
env = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry_run, "device": device, "commit": commit,
       "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "bench_flags": flags, "source_sha256": sys.argv[5]}
if device == "cuda":
    props = torch.cuda.get_device_properties(0)
    env.update(device_name=props.name, capability=list(torch.cuda.get_device_capability(0)),
               memory_gb=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
               device_count=torch.cuda.device_count())
else:
    env.update(device_name=platform.processor() or "cpu", threads=torch.get_num_threads())
try:
    from memflow_cli.model.quantization import describe_fp8_path, fp8_compute_path
    env["fp8_path"] = fp8_compute_path(device)
    env["fp8"] = describe_fp8_path(device)
except Exception as exc:  # an older tree: recorded, not fatal
    env["fp8_path"] = f"unknown ({exc})"
try:
    from memflow_cli.model.dit import attention_backend
    env["attention_bf16"] = attention_backend(device, torch.bfloat16)
except Exception as exc:
    env["attention_bf16"] = f"unknown ({exc})"
print(json.dumps(env, indent=2))
PYEOF
FP8_PATH="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("fp8_path", ""))' "$RESULTS/environment.json")"
log "device $DEVICE; bench flags:${FLAGS_FOUND:- none of --compile/--quantization/--no-overlap}; fp8 path: $FP8_PATH"

# ---------------------------------------------------------------------------------------------- runs
if [ "$DRY_RUN" = 1 ]; then
    SIZE=(--preset tiny --resolution 64x64 --vae-dim 8 --switch-every 2)
    CHUNKS=4        # the main runs
    SHORT_CHUNKS=4  # the secondary ones
    LONG_CHUNKS=6
    PRECISION=(--device cpu --dtype fp32)
    GOLDEN_DTYPES=fp32,bf16
    # inductor's C++ compile is slow on a small CPU: the compiled golden path is exercised on one case
    GOLDEN_COMPILE=(--cases B1 --dtypes fp32)
    PROFILE=(--preset tiny --resolution 64x64 --vae-dim 8 --device cpu --dtype fp32 --warmup 1 --chunks 1)
    ATTENTION=(--tiny --device cpu)
else
    SIZE=(--preset wan2.1-t2v-1.3b --resolution 832x480)
    CHUNKS=24
    SHORT_CHUNKS=16
    LONG_CHUNKS=200
    PRECISION=(--device cuda --dtype bf16)
    GOLDEN_DTYPES=fp32,bf16
    GOLDEN_COMPILE=()
    PROFILE=(--preset wan2.1-t2v-1.3b --resolution 832x480 --device cuda --dtype bf16 --vae wan --warmup 8 --chunks 3)
    ATTENTION=(--device cuda --dtype bf16)
fi
if command -v timeout >/dev/null 2>&1; then HAVE_TIMEOUT=1; else HAVE_TIMEOUT=0; log "warning: no timeout(1): runs are not time-limited"; fi

ORDER=0
FAILED=()
record_skip() {  # name kind reason variant command estimate
    "$PY" benchmarks/summarize.py skip --name "$1" --kind "$2" --reason "$3" --variant "$4" --command "$5" \
        --order "$ORDER" --estimate "${6:-0}" --out "$RESULTS/$1.json"
}
selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# run_step NAME KIND ESTIMATE_S LIMIT_S VARIANT_JSON NOTE REPORT -- COMMAND...
#   REPORT: the file the command writes its JSON to ("-": its stdout). ESTIMATE_S: what the run takes on one
#   H100/H200 at today's speeds; with less budget left it is skipped ("time budget"). LIMIT_S: its own time
#   budget, after which it is killed (at most what is left of the whole budget).
run_step() {
    local name="$1" kind="$2" estimate="$3" limit="$4" variant="$5" note="$6" report="$7"
    shift 8
    ORDER=$((ORDER + 1))
    selected "$name" || return 0
    local left=$((BUDGET - $(elapsed)))
    local need=$estimate
    [ "$DRY_RUN" = 1 ] && need=1
    if [ "$left" -lt "$need" ]; then
        record_skip "$name" "$kind" "time budget: ${left} s left of ${BUDGET} s, the run needs about ${estimate} s" \
            "$variant" "$*" "$estimate"
        return 0
    fi
    [ "$DRY_RUN" = 1 ] && limit=300
    [ "$limit" -gt "$left" ] && limit=$left
    [ "$report" = "-" ] && report="$RAW/$name.out"
    rm -f "$report"
    log "$name: $* (estimate ${estimate} s, limit ${limit} s)"
    local t0=$SECONDS rc=0
    if [ "$HAVE_TIMEOUT" = 1 ]; then
        timeout -k 10 "$limit" "$@" > "$RAW/$name.out" 2> "$LOGS/$name.log" || rc=$?
    else
        "$@" > "$RAW/$name.out" 2> "$LOGS/$name.log" || rc=$?
    fi
    "$PY" benchmarks/summarize.py record --name "$name" --kind "$kind" --rc "$rc" --seconds "$((SECONDS - t0))" \
        --report "$report" --log "$LOGS/$name.log" --out "$RESULTS/$name.json" --command "$*" \
        --variant "$variant" --note "$note" --timeout "$limit" --order "$ORDER" --estimate "$estimate"
    local status
    status="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["device_check"]["status"])' "$RESULTS/$name.json")"
    [ "$status" = ok ] || FAILED+=("$name ($status)")
}

# bench_step NAME ESTIMATE_S LIMIT_S VARIANT_JSON NEEDS_FLAG NOTE -- BENCH ARGS...
bench_step() {
    local name="$1" estimate="$2" limit="$3" variant="$4" needs="$5" note="$6"
    shift 7
    local cmd=("${MEMFLOW[@]}" bench "${SIZE[@]}" "${PRECISION[@]}" --json "$@")
    local flag
    for flag in $needs; do
        if ! has_flag "$flag"; then
            ORDER=$((ORDER + 1))
            selected "$name" && record_skip "$name" bench "flag not available ($flag is not in memflow bench --help)" \
                "$variant" "${cmd[*]}" "$estimate"
            return 0
        fi
    done
    run_step "$name" bench "$estimate" "$limit" "$variant" "$note" - -- "${cmd[@]}"
}

V() {  # variant JSON: compile vae sma quantization baseline video chunks
    printf '{"compile": %s, "vae": "%s", "sma": %s, "quantization": %s, "baseline": %s, "video": %s, "chunks": %s}' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7"
}
VIDEO=true; [ ${#NO_VIDEO[@]} -gt 0 ] && VIDEO=false
# the short run in the other schedule (DiT beside the decoder vs alone) only where the decoder is heavy
NO_SCHED=(); has_flag --no-compare-schedules && NO_SCHED=(--no-compare-schedules)

# Most important first: what a GPU session must bring back even if the budget runs out early. Estimates: one
# H200 at the speeds measured on 2026-12-04 (issues 21, 25): eager DiT ~0.5 s per chunk, Wan decode 0.23 s,
# compiled ~0.36 s, fp8 ~0.73 s, a compile ~30-60 s; plus ~10 s per run to start Python and build the models.
run_step golden golden 50 100 '{"dtypes": "'"$GOLDEN_DTYPES"'"}' "" "$RAW/golden.json" -- \
    "$PY" benchmarks/golden_device.py --device "$DEVICE" --dtypes "$GOLDEN_DTYPES" --out "$RAW/golden.json"

# the default path with the Wan VAE: bank cost (baseline), decode ms, DiT beside the decoder and alone, peak vs plan
bench_step eager-wan 60 150 "$(V false wan false null true $VIDEO $CHUNKS)" "" "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae wan "${NO_VIDEO[@]}"
# the generation target (>= 40 FPS) on the fastest path
bench_step compile-lighttae 55 150 "$(V true lighttae false null false $VIDEO $CHUNKS)" --compile "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae lighttae --compile --no-baseline "${NO_SCHED[@]}" "${NO_VIDEO[@]}"
# CUDA graphs (--compile's default on CUDA): when the compiled run failed or fell back to eager, measure the
# compiled block without them (--compile-mode default) before anything else.
if [ "$DRY_RUN" = 0 ] && "$PY" benchmarks/summarize.py fell-back "$RESULTS/compile-lighttae.json"; then
    bench_step compile-nographs-lighttae 55 150 "$(V true lighttae false null false $VIDEO $CHUNKS)" --compile \
        "compile-lighttae failed or fell back to eager: the compiled block without CUDA graphs" -- \
        --chunks "$CHUNKS" --vae lighttae --compile --compile-mode default --no-baseline "${NO_SCHED[@]}" "${NO_VIDEO[@]}"
fi
# where a steady chunk's time goes: kernel time by kind, launches per chunk
if [ -f benchmarks/kernel_profile.py ]; then
    run_step profile profile 35 90 '{"compile": false, "vae": "wan"}' "" - -- \
        "$PY" benchmarks/kernel_profile.py "${PROFILE[@]}"
fi
# faster attention than cuDNN where it exists: every importable kernel side by side at the steady shape
if [ -f benchmarks/attention.py ]; then
    run_step attention attention 15 60 '{}' "" - -- "$PY" benchmarks/attention.py "${ATTENTION[@]}"
else
    ORDER=$((ORDER + 1))
fi
# flat ms per chunk over a long stream, and end to end with lighttae (the eager lighttae figures)
bench_step flat-lighttae 110 200 "$(V false lighttae false null false $VIDEO $LONG_CHUNKS)" "" "$VIDEO_NOTE" -- \
    --chunks "$LONG_CHUNKS" --vae lighttae --no-baseline "${NO_SCHED[@]}" "${NO_VIDEO[@]}"
# end to end with the Wan VAE on the compiled DiT
bench_step compile-wan 55 150 "$(V true wan false null false $VIDEO $SHORT_CHUNKS)" --compile "$VIDEO_NOTE" -- \
    --chunks "$SHORT_CHUNKS" --vae wan --compile --no-baseline "${NO_VIDEO[@]}"
bench_step sma-lighttae 30 80 "$(V false lighttae true null true $VIDEO $SHORT_CHUNKS)" "" "$VIDEO_NOTE" -- \
    --chunks "$SHORT_CHUNKS" --vae lighttae --sma "${NO_SCHED[@]}" "${NO_VIDEO[@]}"

FP8_VARIANT="$(V false lighttae false '"fp8"' false $VIDEO $SHORT_CHUNKS)"
if [ "$DRY_RUN" = 0 ] && [ "$FP8_PATH" != scaled_mm ] && has_flag --quantization; then
    ORDER=$((ORDER + 1))
    selected fp8-lighttae && record_skip fp8-lighttae bench \
        "no real fp8 matmuls on this device (fp8 path: $FP8_PATH; needs torch._scaled_mm on sm_89+)" \
        "$FP8_VARIANT" "memflow bench --quantization fp8" 25
else
    FP8_NOTE=""
    [ "$DRY_RUN" = 1 ] && FP8_NOTE="dry run: fp8 weights de-quantized per layer (path $FP8_PATH); a GPU run needs scaled_mm"
    bench_step fp8-lighttae 25 80 "$FP8_VARIANT" --quantization "$FP8_NOTE" -- \
        --chunks "$SHORT_CHUNKS" --vae lighttae --quantization fp8 --no-baseline "${NO_SCHED[@]}" "${NO_VIDEO[@]}"
fi

# non-view ops per block per pass (issue 25's lean-block count), when the tree has the script
if [ -f benchmarks/op_count.py ]; then
    run_step op-count op-count 20 60 '{}' "" - -- "$PY" benchmarks/op_count.py
else
    ORDER=$((ORDER + 1))
fi

PIPELINE_CASES="$("$PY" -c 'import json, sys; print(",".join(c["id"] for c in json.load(open(sys.argv[1]))["cases"] if c["kind"] == "pipeline"))' tests/golden/cases.json)"
[ ${#GOLDEN_COMPILE[@]} -gt 0 ] || GOLDEN_COMPILE=(--cases "$PIPELINE_CASES" --dtypes "$GOLDEN_DTYPES")
if "$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import golden_device as g; sys.exit(0 if g._compile_helper()[1] else 1)' 2>/dev/null; then
    run_step golden-compile golden 90 180 '{"compile": true}' "" "$RAW/golden-compile.json" -- \
        "$PY" benchmarks/golden_device.py --device "$DEVICE" --compile "${GOLDEN_COMPILE[@]}" \
        --out "$RAW/golden-compile.json"
else
    ORDER=$((ORDER + 1))
    selected golden-compile && record_skip golden-compile golden "no DiT compile helper in this tree" \
        '{"compile": true}' "benchmarks/golden_device.py --compile" 90
fi

# ---------------------------------------------------------------------------------------------- summary
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,power.draw,clocks.sm,clocks.mem \
        --format=csv > "$RESULTS/nvidia-smi-after.csv" 2>&1 || true
fi
SUMMARY_ARGS=("$RESULTS")
[ "$DRY_RUN" = 1 ] && SUMMARY_ARGS+=(--dry-run)
"$PY" benchmarks/summarize.py summary "${SUMMARY_ARGS[@]}" > "$LOGS/summary.log" 2>&1 \
    || { cat "$LOGS/summary.log" >&2; die "the summary failed"; }
cat "$RESULTS/summary.md"
log "done in $(elapsed) s: $RESULTS/summary.md"
if [ -n "$ARCHIVE" ]; then
    ARCHIVE="$(absolute "$ARCHIVE")"
    mkdir -p "$(dirname "$ARCHIVE")"
    tar -czf "$ARCHIVE" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" && log "packed into $ARCHIVE"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
    log "runs that did not succeed: ${FAILED[*]} (logs in $LOGS)"
    exit 1
fi
