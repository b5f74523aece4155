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
#   --budget S      wall-clock budget of the whole script in seconds (default 450; dry run 1200). A run that
#                   does not fit in what is left is skipped (recorded as such); each run is killed at the
#                   end of the budget.
#   --only LIST     run only these steps (names as in the table below); the summary covers the folder
#   --python PY     the interpreter that has torch (default: $PYTHON, else python3)
#   --archive F     also pack the results folder into F (.tar.gz), one file to bring back from the machine
#
# Steps, most important first (a failed run does not stop the others; each writes RESULTS/<name>.json):
#   golden            tests/golden on the device: float32 pass/fail, bf16 rel-L2 per case
#   eager-wan         memflow bench --vae wan            (with and without the memory bank)
#   eager-lighttae    memflow bench --vae lighttae       (no baseline: the bank's cost is the DiT's, see eager-wan)
#   compile-wan       memflow bench --vae wan --compile  (with and without the memory bank)
#   compile-nographs-wan  only when compile-wan failed or fell back: --compile-mode default (no CUDA graphs)
#   compile-lighttae  memflow bench --vae lighttae --compile
#   sma-lighttae      memflow bench --sma --vae lighttae (with and without the memory bank: the SMA cost)
#   fp8-lighttae      memflow bench --quantization fp8 --vae lighttae (only where fp8 runs as real fp8 matmuls)
#   flat-lighttae     memflow bench --vae lighttae --chunks 200 --no-video (ms per chunk over a long stream)
#   golden-compile    the pipeline golden cases through the compiled DiT (when the tree has a compile helper)
# Bench runs: 832x480, 40 chunks, 4 steps, bf16, random full-size weights; dry run: --preset tiny 64x64, 4 chunks.
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
    if [ "$DRY_RUN" = 1 ]; then BUDGET=1200; else BUDGET=450; fi
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
    from memflow_cli.quantization import describe_fp8_path, fp8_compute_path
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
    CHUNKS=4
    LONG_CHUNKS=6
    PRECISION=(--device cpu --dtype fp32)
    GOLDEN_DTYPES=fp32,bf16
    # inductor's C++ compile is slow on a small CPU: the compiled golden path is exercised on one case
    GOLDEN_COMPILE=(--cases B1 --dtypes fp32)
else
    SIZE=(--preset wan2.1-t2v-1.3b --resolution 832x480)
    CHUNKS=40
    LONG_CHUNKS=200
    PRECISION=(--device cuda --dtype bf16)
    GOLDEN_DTYPES=fp32,bf16
    GOLDEN_COMPILE=()
fi
if command -v timeout >/dev/null 2>&1; then HAVE_TIMEOUT=1; else HAVE_TIMEOUT=0; log "warning: no timeout(1): runs are not time-limited"; fi

ORDER=0
FAILED=()
record_skip() {  # name kind reason variant command
    "$PY" benchmarks/summarize.py skip --name "$1" --kind "$2" --reason "$3" --variant "$4" --command "$5" \
        --order "$ORDER" --out "$RESULTS/$1.json"
}
selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# run_step NAME KIND ESTIMATE_S VARIANT_JSON NOTE REPORT -- COMMAND...
#   REPORT: the file the command writes its JSON to ("-": its stdout). ESTIMATE_S: the least time the run
#   needs on the real device; with less budget left it is skipped. Its time limit: 3x that, at most what is left.
run_step() {
    local name="$1" kind="$2" estimate="$3" variant="$4" note="$5" report="$6"
    shift 7
    ORDER=$((ORDER + 1))
    selected "$name" || return 0
    local left=$((BUDGET - $(elapsed)))
    local need=$estimate
    [ "$DRY_RUN" = 1 ] && need=1
    if [ "$left" -lt "$need" ]; then
        record_skip "$name" "$kind" "time budget: ${left} s left of ${BUDGET} s, the run needs about ${estimate} s" \
            "$variant" "$*"
        return 0
    fi
    local limit=$((3 * estimate))
    [ "$DRY_RUN" = 1 ] && limit=300
    [ "$limit" -gt "$left" ] && limit=$left
    [ "$report" = "-" ] && report="$RAW/$name.out"
    rm -f "$report"
    log "$name: $* (limit ${limit} s)"
    local t0=$SECONDS rc=0
    if [ "$HAVE_TIMEOUT" = 1 ]; then
        timeout -k 10 "$limit" "$@" > "$RAW/$name.out" 2> "$LOGS/$name.log" || rc=$?
    else
        "$@" > "$RAW/$name.out" 2> "$LOGS/$name.log" || rc=$?
    fi
    "$PY" benchmarks/summarize.py record --name "$name" --kind "$kind" --rc "$rc" --seconds "$((SECONDS - t0))" \
        --report "$report" --log "$LOGS/$name.log" --out "$RESULTS/$name.json" --command "$*" \
        --variant "$variant" --note "$note" --timeout "$limit" --order "$ORDER"
    local status
    status="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["device_check"]["status"])' "$RESULTS/$name.json")"
    [ "$status" = ok ] || FAILED+=("$name ($status)")
}

# bench_step NAME ESTIMATE_S VARIANT_JSON NEEDS_FLAG NOTE -- BENCH ARGS...
bench_step() {
    local name="$1" estimate="$2" variant="$3" needs="$4" note="$5"
    shift 6
    local cmd=("${MEMFLOW[@]}" bench "${SIZE[@]}" "${PRECISION[@]}" --json "$@")
    local flag
    for flag in $needs; do
        if ! has_flag "$flag"; then
            ORDER=$((ORDER + 1))
            selected "$name" && record_skip "$name" bench "flag not available ($flag is not in memflow bench --help)" \
                "$variant" "${cmd[*]}"
            return 0
        fi
    done
    run_step "$name" bench "$estimate" "$variant" "$note" - -- "${cmd[@]}"
}

V() {  # variant JSON: compile vae sma quantization baseline video chunks
    printf '{"compile": %s, "vae": "%s", "sma": %s, "quantization": %s, "baseline": %s, "video": %s, "chunks": %s}' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7"
}
VIDEO=true; [ ${#NO_VIDEO[@]} -gt 0 ] && VIDEO=false

run_step golden golden 45 '{"dtypes": "'"$GOLDEN_DTYPES"'"}' "" "$RAW/golden.json" -- \
    "$PY" benchmarks/golden_device.py --device "$DEVICE" --dtypes "$GOLDEN_DTYPES" --out "$RAW/golden.json"

bench_step eager-wan 60 "$(V false wan false null true $VIDEO $CHUNKS)" "" "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae wan "${NO_VIDEO[@]}"
bench_step eager-lighttae 30 "$(V false lighttae false null false $VIDEO $CHUNKS)" "" "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae lighttae --no-baseline "${NO_VIDEO[@]}"
bench_step compile-wan 120 "$(V true wan false null true $VIDEO $CHUNKS)" --compile "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae wan --compile "${NO_VIDEO[@]}"
# CUDA graphs (--compile's default on CUDA) have never run before this script: when compile-wan failed or fell
# back to eager, measure the compiled block without them (--compile-mode default) before anything else.
if [ "$DRY_RUN" = 0 ] && "$PY" benchmarks/summarize.py fell-back "$RESULTS/compile-wan.json"; then
    bench_step compile-nographs-wan 120 "$(V true wan false null true $VIDEO $CHUNKS)" --compile \
        "compile-wan failed or fell back to eager: the compiled block without CUDA graphs" -- \
        --chunks "$CHUNKS" --vae wan --compile --compile-mode default "${NO_VIDEO[@]}"
fi
bench_step compile-lighttae 90 "$(V true lighttae false null false $VIDEO $CHUNKS)" --compile "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae lighttae --compile --no-baseline "${NO_VIDEO[@]}"
bench_step sma-lighttae 45 "$(V false lighttae true null true $VIDEO $CHUNKS)" "" "$VIDEO_NOTE" -- \
    --chunks "$CHUNKS" --vae lighttae --sma "${NO_VIDEO[@]}"

FP8_VARIANT="$(V false lighttae false '"fp8"' false $VIDEO $CHUNKS)"
if [ "$DRY_RUN" = 0 ] && [ "$FP8_PATH" != scaled_mm ] && has_flag --quantization; then
    ORDER=$((ORDER + 1))
    selected fp8-lighttae && record_skip fp8-lighttae bench \
        "no real fp8 matmuls on this device (fp8 path: $FP8_PATH; needs torch._scaled_mm on sm_89+)" \
        "$FP8_VARIANT" "memflow bench --quantization fp8"
else
    FP8_NOTE=""
    [ "$DRY_RUN" = 1 ] && FP8_NOTE="dry run: fp8 weights de-quantized per layer (path $FP8_PATH); a GPU run needs scaled_mm"
    bench_step fp8-lighttae 30 "$FP8_VARIANT" --quantization "$FP8_NOTE" -- \
        --chunks "$CHUNKS" --vae lighttae --quantization fp8 --no-baseline "${NO_VIDEO[@]}"
fi

bench_step flat-lighttae 90 "$(V false lighttae false null false false $LONG_CHUNKS)" "" "" -- \
    --chunks "$LONG_CHUNKS" --vae lighttae --no-baseline --no-video

PIPELINE_CASES="$("$PY" -c 'import json, sys; print(",".join(c["id"] for c in json.load(open(sys.argv[1]))["cases"] if c["kind"] == "pipeline"))' tests/golden/cases.json)"
[ ${#GOLDEN_COMPILE[@]} -gt 0 ] || GOLDEN_COMPILE=(--cases "$PIPELINE_CASES" --dtypes "$GOLDEN_DTYPES")
if "$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import golden_device as g; sys.exit(0 if g._compile_helper()[1] else 1)' 2>/dev/null; then
    run_step golden-compile golden 90 '{"compile": true}' "" "$RAW/golden-compile.json" -- \
        "$PY" benchmarks/golden_device.py --device "$DEVICE" --compile "${GOLDEN_COMPILE[@]}" \
        --out "$RAW/golden-compile.json"
else
    ORDER=$((ORDER + 1))
    selected golden-compile && record_skip golden-compile golden "no DiT compile helper in this tree" \
        '{"compile": true}' "benchmarks/golden_device.py --compile"
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
