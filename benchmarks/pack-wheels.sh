#!/usr/bin/env bash
# The wheels folder for the lent H200 (Python 3.12, x86-64), small enough to travel with the checkout under the
# device tool's 64 MiB: imageio-ffmpeg 0.6.0 WITHOUT its 76 MiB ffmpeg binary, the binary itself xz-compressed
# beside it (device-check.sh unpacks it and points IMAGEIO_FFMPEG_EXE at it), ftfy and wcwidth.
#
#   bash benchmarks/pack-wheels.sh [--out DIR] [--from DIR]
#
#   --out DIR    the folder to fill (default: .whl, git-ignored); existing wheels of the same names are replaced
#   --from DIR   take the three wheels from this folder instead of downloading them (pip download)
#
# Needs a Python with pip (for the download) and the standard library's zipfile and lzma; no xz(1).
set -euo pipefail

die() { echo "pack-wheels: $*" >&2; exit 1; }
OUT=".whl"
FROM=""
PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift ;;
        --from) [ $# -ge 2 ] || die "--from needs a folder"; FROM="$2"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
command -v "$PY" >/dev/null 2>&1 || die "no Python '$PY' (set \$PYTHON)"

if [ -z "$FROM" ]; then
    FROM="$(mktemp -d "${TMPDIR:-/tmp}/memflow-wheels.XXXXXX")"
    trap 'rm -rf "$FROM"' EXIT
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$FROM" \
        imageio-ffmpeg==0.6.0 ftfy wcwidth >&2 || die "pip download failed (no index reachable? use --from DIR)"
fi
[ -d "$FROM" ] || die "--from $FROM: no such folder"
mkdir -p "$OUT"

"$PY" - "$FROM" "$OUT" <<'PYEOF'
import lzma
import shutil
import sys
import zipfile
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
wheels = sorted(src.glob("*.whl"))
ffmpeg_wheels = [w for w in wheels if w.name.startswith("imageio_ffmpeg-")]
if len(ffmpeg_wheels) != 1:
    sys.exit(f"pack-wheels: expected one imageio_ffmpeg wheel in {src}, found {[w.name for w in ffmpeg_wheels]}")
for wheel in wheels:
    if wheel not in ffmpeg_wheels:
        shutil.copy(wheel, out / wheel.name)
        continue
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as zin:
        binaries = [i for i in zin.infolist() if "/binaries/ffmpeg-" in i.filename]
        if len(binaries) != 1:
            sys.exit(f"pack-wheels: {wheel.name} holds {len(binaries)} ffmpeg binaries, expected 1")
        binary = binaries[0]
        exe = out / (Path(binary.filename).name + ".xz")
        with zin.open(binary) as f, lzma.open(exe, "wb", preset=9 | lzma.PRESET_EXTREME) as x:
            shutil.copyfileobj(f, x, 1 << 20)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                if info.filename == binary.filename:
                    continue
                data = zin.read(info)
                if info.filename.endswith(".dist-info/RECORD"):  # the binary's line goes with the binary
                    data = b"".join(line for line in data.splitlines(keepends=True)
                                    if not line.startswith(binary.filename.encode() + b","))
                zout.writestr(info, data)
    print(f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB -> {target.stat().st_size / 2**20:.2f} MiB without"
          f" {Path(binary.filename).name} ({binary.file_size / 2**20:.1f} MiB) -> {exe.name}"
          f" {exe.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
print(f"{out}: {total / 2**20:.1f} MiB in {len(list(out.iterdir()))} files", file=sys.stderr)
PYEOF
