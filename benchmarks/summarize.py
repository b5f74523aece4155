"""The bookkeeping of benchmarks/device-check.sh: one JSON per run, then summary.md and summary.json.

    python benchmarks/summarize.py record --name eager-wan --rc 0 --seconds 71.2 --report RAW --log LOG \
        --out RESULTS/eager-wan.json --variant '{"compile": false, "vae": "wan"}' --command '...'
    python benchmarks/summarize.py skip --name fp8-lighttae --reason 'flag not available' --out RESULTS/fp8-lighttae.json
    python benchmarks/summarize.py summary RESULTS [--dry-run]

`record` keeps what the run printed (a `memflow bench --json` report or the golden report) and adds a
`device_check` entry: name, status (ok / failed / timeout / skipped), exit status, seconds, command, variant,
and the tail of the run's log when it did not succeed. A run that printed nothing usable still gets its file.

`summary` reads every run file in the folder (plus golden.json and environment.json) and writes summary.md
(a table, one row per run, the target checks and the golden results) and summary.json (the same figures).
Only the standard library: it runs before anything else is known to work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

# The targets, on one H100/H200 at 832x480, 4 steps, bf16.
TARGETS = {
    "gen_fps": 40.0,  # generation only, frames per second (issue 25)
    "default_gen_fps": 36.0,  # the path a user gets without flags (issue 25)
    "e2e_fps_wan": 30.0,  # end to end with the Wan VAE (+ H.264) (issue 21)
    "e2e_fps_lighttae": 40.0,  # end to end with lighttae (issue 21)
    "wan_decode_ms": 90.0,  # Wan VAE decode per chunk of 12 frames (issue 21)
    "fp8_speedup": 1.3,  # fp8 DiT against bf16 DiT, steady ms per chunk (issue 25)
    "bank_cost_percent": 15.0,  # memory bank's DiT time against no memory
    "sma_cost_percent": 5.0,  # the same with SMA on
    "peak_vs_plan_percent": 10.0,  # measured peak within this of memflow info's plan (issue 21)
    "peak_memory_gb": 16.0,  # benchmarks/README.md's target list
    "flat_late_over_early": 1.10,  # steady-state ms per chunk at most 10 % above the early chunks'
}
TIMEOUT_RC = (124, 137)
KINDS = ("bench", "golden", "profile", "op-count", "attention")  # what a step runs  # timeout(1): 124 on SIGTERM, 128 + 9 when it had to kill


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _load_report(path: Path | None):
    """The JSON object a run printed (bench: stdout; golden: its --out file), or None."""
    if path is None or not path.is_file():
        return None
    text = path.read_text(errors="replace").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        # tolerate stray lines before the object (a warning printed to stdout)
        start = text.find("\n{")
        if start < 0:
            return None
        try:
            value = json.loads(text[start + 1:])
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def record(args) -> int:
    report = _load_report(args.report)
    variant = json.loads(args.variant) if args.variant else {}
    text_output = None
    if report is None and args.kind == "op-count" and args.report is not None and args.report.is_file():
        text_output = _tail(args.report, 60)  # a script that prints a table, not JSON: its text is the report
    if args.rc in TIMEOUT_RC:
        status = "timeout"
    elif args.rc == 0 and (report is not None or text_output):
        status = "ok"
    else:
        status = "failed"
    entry = {"name": args.name, "kind": args.kind, "order": args.order, "status": status, "rc": args.rc,
             "seconds": args.seconds, "estimate": args.estimate, "command": args.command, "variant": variant}
    if text_output:
        entry["output"] = text_output
    if args.note:
        entry["note"] = args.note
    if status != "ok":
        entry["reason"] = {"timeout": f"killed after {args.timeout} s (time budget)" if args.timeout else "timed out",
                           "failed": f"exit status {args.rc}" + ("" if report is not None else ", no JSON report")}[status]
        entry["log_tail"] = _tail(args.log)
    out = dict(report or {})
    out["device_check"] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{args.name}: {status} ({args.seconds:.1f} s)" + (f" — {entry['reason']}" if status != "ok" else ""),
          file=sys.stderr)
    return 0


def skip(args) -> int:
    entry = {"name": args.name, "kind": args.kind, "order": args.order, "status": "skipped", "reason": args.reason,
             "rc": None, "seconds": 0.0, "estimate": args.estimate,
             "command": args.command, "variant": json.loads(args.variant) if args.variant else {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device_check": entry}, indent=2) + "\n")
    print(f"{args.name}: skipped — {args.reason}", file=sys.stderr)
    return 0


def source_hash(folder: Path) -> str:
    """sha256 over a source tree: every file's path (relative, '/'-separated) and bytes, in sorted order;
    caches (__pycache__, .pyc) left out. The same tree gives the same hash on any machine."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".pyo"))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def print_source_hash(args) -> int:
    print(source_hash(args.folder))
    return 0


def unpack_ffmpeg(wheels: Path, dest: Path) -> Path:
    """The ffmpeg binary that pack-wheels.sh carries as `ffmpeg-*.xz` in the wheels folder, unpacked into `dest`
    and made executable (for IMAGEIO_FFMPEG_EXE). Only the standard library: the machine may have no xz(1)."""
    import lzma
    import shutil

    packed = sorted(wheels.glob("ffmpeg*.xz"))
    if len(packed) != 1:
        raise SystemExit(f"unpack-ffmpeg: expected one ffmpeg*.xz in {wheels}, found {[p.name for p in packed]}")
    exe = dest / packed[0].name[: -len(".xz")]
    dest.mkdir(parents=True, exist_ok=True)
    with lzma.open(packed[0]) as f, open(exe, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
    exe.chmod(0o755)
    return exe


def print_unpacked_ffmpeg(args) -> int:
    print(unpack_ffmpeg(args.wheels, args.dest))
    return 0


def requirements(args) -> int:
    """The project's dependencies from pyproject.toml, one per line, without torch (the machine brings its own)."""
    text = (args.pyproject).read_text()
    start = text.index("dependencies = [", text.index("[project]"))
    block = text[start + len("dependencies = ["): text.index("]", start)]
    for line in block.splitlines():
        req = line.strip().rstrip(",").strip().strip('"').strip("'")
        name = req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        if req and not req.startswith("#") and name != "torch":
            print(req)
    return 0


# ------------------------------------------------------------------------------------------------ summary


def _num(value, fmt="{:.1f}"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value)


def run_rows(folder: Path) -> list[dict]:
    """One row per run file (files with a `device_check` entry), in the order the script ran them."""
    rows = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        check = data.get("device_check") if isinstance(data, dict) else None
        if not check or check.get("kind", "bench") != "bench":
            continue
        w = data.get("with_memory") or {}
        wo = data.get("without_memory") or {}
        per = w.get("per_chunk_ms") or {}
        sched = data.get("schedules") or {}
        memory = data.get("memory") or {}
        rows.append({
            "name": check["name"], "file": path.name, "status": check["status"], "reason": check.get("reason"),
            "note": check.get("note"), "seconds": check.get("seconds"), "variant": check.get("variant", {}),
            "order": check.get("order", 0),
            "gen_fps": w.get("generation_fps"), "e2e_fps": w.get("end_to_end_fps"),
            "dit_ms": per.get("dit"), "vae_ms": per.get("vae"), "recache_ms": per.get("recache"),
            "encode_ms": per.get("encode"),
            "dit_ms_early": w.get("dit_ms_early"), "dit_ms_late": w.get("dit_ms_late"),
            "chunks": w.get("chunks"),
            "peak_gb": max((r["peak_memory_gb"] for r in (w, wo) if r.get("peak_memory_gb") is not None), default=None),
            "memory_cost": data.get("memory_cost_percent"), "memory_cost_noise": data.get("memory_cost_noise_percent"),
            "memory_cost_within_noise": data.get("memory_cost_within_noise"),
            "gen_fps_no_memory": wo.get("generation_fps"),
            "compile_s": _compile_seconds(data), "compile_note": _compile_note(data),
            "warmup_s": sum((data.get("warmup_seconds") or {}).values()) or None,
            "device": data.get("device"), "attention": data.get("attention"),
            "dit_ms_overlap": sched.get("dit_ms_overlap"), "dit_ms_serial": sched.get("dit_ms_serial"),
            "decode_ms_serial": sched.get("decode_ms_serial"),
            "planned_gb": memory.get("planned_gb"), "measured_gb": memory.get("measured_gb"),
            "over_plan_percent": memory.get("over_plan_percent"),
            "ttff_s": data.get("time_to_first_frame_after_load_s"),
        })
    rows.sort(key=lambda r: (r["order"], r["name"]))
    return rows


def _compile_seconds(report: dict):
    """Compile seconds: the bench's `compile` entry (compiled.py's figures), else any numeric compile key."""
    entry = report.get("compile")
    if isinstance(entry, dict) and isinstance(entry.get("compile_seconds"), (int, float)):
        return float(entry["compile_seconds"])
    for where in (report, report.get("with_memory") or {}):
        for key, value in where.items():
            if "compile" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def _compile_note(report: dict) -> str | None:
    """What a reader of a --compile row must know: a fall-back to eager, recompilations inside the timed runs."""
    entry = report.get("compile")
    if not isinstance(entry, dict):
        return None
    parts = []
    if entry.get("fallback"):
        parts.append(f"COMPILE FELL BACK TO EAGER ({entry['fallback']})")
    if entry.get("compilations_in_timed_runs"):
        parts.append(f"{entry['compilations_in_timed_runs']} compilation(s) inside the timed runs")
    if not parts:
        return None
    return "; ".join(parts)


def _best(rows, key, keep):
    candidates = [r for r in rows if r["status"] == "ok" and r.get(key) is not None and keep(r)]
    return max(candidates, key=lambda r: r[key]) if candidates else None


def _worst(rows, key, keep):
    candidates = [r for r in rows if r["status"] == "ok" and r.get(key) is not None and keep(r)]
    return max(candidates, key=lambda r: r[key]) if candidates else None


def target_checks(rows: list[dict]) -> list[dict]:
    """met / missed / not measured per target. Speed: the best run that may claim it (bf16 weights, not fp8);
    costs and memory: the worst measured run (a ceiling holds only if it holds everywhere)."""
    bf16 = lambda r: not r["variant"].get("quantization")  # noqa: E731
    checks = []

    def add(target, limit, row, value, ok, how):
        checks.append({"target": target, "limit": limit, "value": value, "run": row["name"] if row else None,
                       "status": "not measured" if row is None else ("met" if ok else "missed"), "how": how})

    r = _best(rows, "gen_fps", bf16)
    add(f"generation ≥ {TARGETS['gen_fps']:.0f} FPS", TARGETS["gen_fps"], r, r and r["gen_fps"],
        r is not None and r["gen_fps"] >= TARGETS["gen_fps"], "best run with bf16 weights")
    default = lambda x: not (x["variant"].get("compile") or x["variant"].get("quantization") or x["variant"].get("sma"))  # noqa: E731
    r = _best(rows, "gen_fps", default)
    add(f"default path (no flags) generation ≥ {TARGETS['default_gen_fps']:.0f} FPS", TARGETS["default_gen_fps"], r,
        r and r["gen_fps"], r is not None and r["gen_fps"] >= TARGETS["default_gen_fps"],
        "best run without --compile, --quantization or --sma")
    r = _best(rows, "e2e_fps", lambda x: bf16(x) and x["variant"].get("vae") == "wan" and x["variant"].get("video", True))
    add(f"end to end with the Wan VAE ≥ {TARGETS['e2e_fps_wan']:.0f} FPS", TARGETS["e2e_fps_wan"], r,
        r and r["e2e_fps"], r is not None and r["e2e_fps"] >= TARGETS["e2e_fps_wan"], "best --vae wan run")
    r = _best(rows, "e2e_fps",
              lambda x: bf16(x) and x["variant"].get("vae") == "lighttae" and x["variant"].get("video", True))
    add(f"end to end with lighttae ≥ {TARGETS['e2e_fps_lighttae']:.0f} FPS", TARGETS["e2e_fps_lighttae"], r,
        r and r["e2e_fps"], r is not None and r["e2e_fps"] >= TARGETS["e2e_fps_lighttae"], "best --vae lighttae run")

    for x in rows:  # the Wan VAE alone (the serial run) when measured, else its time in the stream
        x["wan_decode_ms"] = (x.get("decode_ms_serial") if x.get("decode_ms_serial") is not None else x.get("vae_ms")) \
            if x["variant"].get("vae") == "wan" else None
    candidates = [x for x in rows if x["status"] == "ok" and x.get("wan_decode_ms") is not None]
    r = min(candidates, key=lambda x: x["wan_decode_ms"]) if candidates else None
    add(f"Wan VAE decode ≤ {TARGETS['wan_decode_ms']:.0f} ms per chunk", TARGETS["wan_decode_ms"], r,
        r and r["wan_decode_ms"], r is not None and r["wan_decode_ms"] <= TARGETS["wan_decode_ms"],
        "best --vae wan run (decode alone in its serial run when there is one)")

    def steady(name):
        x = next((x for x in rows if x["name"] == name and x["status"] == "ok"), None)
        return x, (x or {}).get("dit_ms_late")

    fp8, fp8_ms = steady("fp8-lighttae")
    bf16_runs = [x for x in rows if x["status"] == "ok" and x.get("dit_ms_late") and default(x)
                 and x["variant"].get("vae") == "lighttae"]
    ratio = None
    if fp8_ms and bf16_runs:
        ratio = bf16_runs[0]["dit_ms_late"] / fp8_ms
    add(f"fp8 DiT ≥ {TARGETS['fp8_speedup']:.1f}× faster than bf16", TARGETS["fp8_speedup"],
        fp8 if ratio is not None else None, ratio, ratio is not None and ratio >= TARGETS["fp8_speedup"],
        "steady DiT ms per chunk (dit_ms_late) of the eager bf16 lighttae run over fp8-lighttae's")

    def cost_ok(row, limit):
        return row["memory_cost"] <= limit or bool(row.get("memory_cost_within_noise"))

    r = _worst(rows, "memory_cost", lambda x: not x["variant"].get("sma"))
    add(f"memory bank cost ≤ {TARGETS['bank_cost_percent']:.0f} %", TARGETS["bank_cost_percent"], r,
        r and r["memory_cost"], r is not None and cost_ok(r, TARGETS["bank_cost_percent"]),
        "worst run with a no-memory baseline (within noise counts as met)")
    r = _worst(rows, "memory_cost", lambda x: bool(x["variant"].get("sma")))
    add(f"memory bank + SMA cost ≤ {TARGETS['sma_cost_percent']:.0f} %", TARGETS["sma_cost_percent"], r,
        r and r["memory_cost"], r is not None and cost_ok(r, TARGETS["sma_cost_percent"]),
        "worst SMA run with a no-memory baseline")
    for x in rows:
        x["abs_over_plan"] = abs(x["over_plan_percent"]) if x.get("over_plan_percent") is not None else None
    r = _worst(rows, "abs_over_plan", lambda x: True)
    add(f"peak within {TARGETS['peak_vs_plan_percent']:.0f} % of the plan", TARGETS["peak_vs_plan_percent"], r,
        r and r["over_plan_percent"], r is not None and r["abs_over_plan"] <= TARGETS["peak_vs_plan_percent"],
        "worst run, measured peak against memflow info's plan (CUDA only)")
    r = _worst(rows, "peak_gb", lambda x: True)
    add(f"peak memory ≤ {TARGETS['peak_memory_gb']:.0f} GB", TARGETS["peak_memory_gb"], r, r and r["peak_gb"],
        r is not None and r["peak_gb"] <= TARGETS["peak_memory_gb"], "worst run")

    def ratio(x):
        early, late = x.get("dit_ms_early"), x.get("dit_ms_late")
        return late / early if early and late is not None else None

    for x in rows:
        x["late_over_early"] = ratio(x)
    long_runs = [x for x in rows if x["status"] == "ok" and x["late_over_early"] is not None]
    longest = max((x["chunks"] or 0 for x in long_runs), default=0)
    r = _worst(rows, "late_over_early", lambda x: (x["chunks"] or 0) == longest)
    add(f"flat ms per chunk (late / early ≤ {TARGETS['flat_late_over_early']:.2f})",
        TARGETS["flat_late_over_early"], r, r and r["late_over_early"],
        r is not None and r["late_over_early"] <= TARGETS["flat_late_over_early"],
        f"worst of the longest runs ({longest} chunks; the target says 200)")
    return checks


def _failure(result: dict) -> str:
    """Why a golden case failed, in a table cell: its error, the checks that failed, the first trace difference."""
    why = []
    if result.get("error"):
        why.append(result["error"])
    failed = [name for name, ok in (result.get("checks") or {}).items() if not ok]
    if failed:
        why.append("check failed: " + ", ".join(failed))
    differences = result.get("trace_differences") or []
    if differences:
        why.append(f"{len(differences)} trace difference(s), first: {differences[0]}")
    outside = [name for name, t in (result.get("tensors") or {}).items() if not t.get("within_tolerance", True)]
    if outside:
        why.append("outside tolerance: " + ", ".join(outside))
    return (" (" + "; ".join(why) + ")").replace("|", "/") if why else ""


def golden_lines(folder: Path) -> list[str]:
    lines = []
    reports = []
    for path in folder.glob("golden*.json"):
        try:
            reports.append((path, json.loads(path.read_text())))
        except (json.JSONDecodeError, OSError):
            continue
    reports.sort(key=lambda pd: (pd[1].get("device_check", {}).get("order", 0), pd[0].name))
    for path, data in reports:
        check = data.get("device_check", {})
        title = f"### {path.stem} ({data.get('name', data.get('device', '?'))}"
        title += f", {data['compile']})" if data.get("compile") else ")"
        lines += ["", title, ""]
        if not data.get("cases"):
            lines.append(f"No cases: {check.get('status', '?')} — {check.get('reason', '')}")
            continue
        dtypes = data.get("dtypes", [])
        cols = ["case", "kind"]
        for d in dtypes:
            cols += ([d] if d == "fp32" else []) + [f"{d} rel-L2", f"{d} s"]
        head = "| " + " | ".join(cols) + " |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for case in data["cases"]:
            cells = [case["id"], case["kind"]]
            for d in dtypes:
                r = case.get(d, {})
                if d == "fp32":
                    cells.append("pass" if r.get("passed") else "**FAIL**" + _failure(r))
                cells += [_num(r.get("rel_l2"), "{:.2e}"), _num(r.get("seconds"), "{:.2f}")]
            lines.append("| " + " | ".join(cells) + " |")
        if "failed" in data:
            lines += ["", f"float32: {len(data['passed'])} passed, {len(data['failed'])} failed"
                      + (f" ({', '.join(data['failed'])})" if data["failed"] else "") + "."]
    return lines


def _run_files(folder: Path) -> list[tuple[Path, dict]]:
    """Every run file of the folder (a JSON with a device_check entry), in the order the script ran them."""
    found = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(data, dict) and isinstance(data.get("device_check"), dict):
            found.append((path, data))
    found.sort(key=lambda pd: (pd[1]["device_check"].get("order", 0), pd[0].name))
    return found


def step_lines(folder: Path) -> tuple[list[str], list[str]]:
    """A table of every step (status, estimate, seconds) and the names of those skipped for time."""
    lines = ["| step | status | estimate s | seconds | reason |", "|---|---|---|---|---|"]
    for_time = []
    total_estimate = total = 0.0
    for _, data in _run_files(folder):
        c = data["device_check"]
        reason = (c.get("reason") or "").replace("|", "/")
        if c["status"] == "skipped" and reason.startswith("time budget"):
            for_time.append(c["name"])
        total_estimate += c.get("estimate") or 0
        total += c.get("seconds") or 0
        lines.append(f"| {c['name']} | {c['status']} | {_num(c.get('estimate'), '{:.0f}')} |"
                     f" {_num(c.get('seconds'), '{:.0f}')} | {reason} |")
    lines.append(f"| all | | {total_estimate:.0f} | {total:.0f} | |")
    return lines, for_time


def _profile(folder: Path):
    path = folder / "profile.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return data


def profile_lines(folder: Path, dry_run: bool = False) -> list[str]:
    data = _profile(folder)
    if data is None:
        return ["", "Not run."]
    check = data.get("device_check", {})
    figures = data.get("profile")
    if not figures:
        return ["", f"{check.get('status', '?')}: {check.get('reason', '')}"]
    o = data.get("options", {})
    gpu = "GPU" if str(o.get("device", "")).startswith("cuda") else "CPU"
    unit = "kernel launches" if gpu == "GPU" else "aten ops (CPU; not kernels)"
    lines = ["", f"{o.get('preset')} {o.get('width')}x{o.get('height')} {o.get('dtype')}, --vae {o.get('vae')}"
                 f"{', compiled' if o.get('compile') else ', eager'}; {o.get('chunks')} steady chunk(s) profiled after"
                 f" {o.get('warmup')}; self {gpu} time per chunk by kind ({data.get('attention', '?')}):", "",
             "| kind | ms / chunk | % |", "|---|---|---|"]
    for kind, ms in figures["ms_per_chunk"].items():
        lines.append(f"| {kind} | {ms:.1f} | {figures['percent'][kind]:.1f} |")
    lines += [f"| all | {figures['total_ms_per_chunk']:.1f} | 100 |", "",
              f"{unit} per chunk: {figures['launches_per_chunk']:.0f}.", "", "Largest:", ""]
    lines += [f"- {t['kind']}: {t['ms_per_chunk']:.2f} ms, {t['calls_per_chunk']:.0f}× — `{t['name'][:100]}`"
              for t in figures.get("top", [])[:8]]
    return lines


def _step_report(folder: Path, name: str, missing: str) -> tuple[dict | None, list[str]]:
    """A step's JSON when it ran ok, else the lines that say why not (not run, failed, timed out)."""
    path = folder / f"{name}.json"
    if not path.is_file():
        return None, ["", missing]
    data = json.loads(path.read_text())
    check = data.get("device_check", {})
    if check.get("status") != "ok":
        return None, ["", f"{check.get('status')}: {check.get('reason', '')}"]
    return data, []


def op_count_lines(folder: Path) -> list[str]:
    data, lines = _step_report(folder, "op-count", "Not run (no benchmarks/op_count.py in this tree).")
    if data is None:
        return lines
    output = data["device_check"].get("output")
    if output:
        return ["", "```", output, "```"]
    report = {k: v for k, v in data.items() if k != "device_check"}
    return ["", "```json", json.dumps(report, indent=1)[:3000], "```"]


def attention_lines(folder: Path) -> list[str]:
    """The attention kernels side by side (benchmarks/attention.py): ms, TFLOP/s, error against float32."""
    data, lines = _step_report(folder, "attention", "Not run.")
    if data is None:
        return lines
    shape, per_chunk = data.get("shape", {}), data.get("per_steady_chunk_ms", {})
    lines = ["", f"{data.get('device', '?')}, {data.get('dtype', '?')}, {shape.get('queries')} queries x "
             f"{shape.get('keys')} keys x {shape.get('heads')} heads x {shape.get('head_dim')}; fastest: "
             f"{data.get('fastest') or '–'}", "", "| kernel | ms / call | TFLOP/s | ms / steady chunk | rel-L2 vs fp32 |",
             "|---|---|---|---|---|"]
    for name, k in data.get("kernels", {}).items():
        if k.get("ran"):
            lines.append(f"| {name} | {k['ms']:.3f} | {k['tflops']:.1f} | {per_chunk[name]:.1f} |"
                         f" {k['rel_l2_vs_fp32']:.2e} |")
        else:
            lines.append(f"| {name} | – | – | – | not run: {k.get('reason', '?')} |")
    return lines


def summary(args) -> int:
    folder = args.folder
    rows = run_rows(folder)
    checks = target_checks(rows)
    env = {}
    if (folder / "environment.json").is_file():
        env = json.loads((folder / "environment.json").read_text())
    title = "device check (dry run: CPU, tiny sizes — the figures say nothing about a GPU)" if args.dry_run \
        else "device check"
    lines = [f"# {title}", ""]
    if env:
        lines.append(f"{env.get('date', '')} · {env.get('device_name', '?')} · torch {env.get('torch', '?')}"
                     f" (CUDA {env.get('cuda') or '–'}) · fp8: {env.get('fp8_path', '?')} · attention:"
                     f" {env.get('attention_bf16', '?')} · commit {env.get('commit', '?')}"
                     + (f" · src sha256 {env['source_sha256'][:16]}" if env.get("source_sha256") else ""))
        lines.append("")
    lines += ["| run | status | gen FPS | e2e FPS | DiT ms/chunk | VAE ms/chunk | DiT ms beside decoder / alone |"
              " memory cost % | peak GB (plan) | first frame s | DiT ms/chunk early → late | compile s / warm-up s |"
              " seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        cost = _num(r["memory_cost"], "{:+.1f}")
        if r["memory_cost"] is not None and r["memory_cost_noise"] is not None:
            cost += f" ± {r['memory_cost_noise']:.1f}"
        flat = "–" if r["dit_ms_early"] is None else f"{r['dit_ms_early']:.1f} → {r['dit_ms_late']:.1f}"
        beside = "–" if r.get("dit_ms_overlap") is None else f"{r['dit_ms_overlap']:.1f} / {r['dit_ms_serial']:.1f}"
        peak = _num(r["peak_gb"], "{:.2f}") + (f" ({r['planned_gb']:.2f})" if r.get("planned_gb") is not None else "")
        lines.append(f"| {r['name']} | {status} | {_num(r['gen_fps'], '{:.2f}')} | {_num(r['e2e_fps'], '{:.2f}')} |"
                     f" {_num(r['dit_ms'])} | {_num(r['vae_ms'])} | {beside} | {cost} | {peak} |"
                     f" {_num(r.get('ttff_s'), '{:.2f}')} | {flat} | {_num(r['compile_s'])} / {_num(r['warmup_s'])} |"
                     f" {_num(r['seconds'])} |")
    notes = [f"- {r['name']}: {r['note']}" for r in rows if r.get("note")]
    notes += [f"- {r['name']}: {r['compile_note']}" for r in rows if r.get("compile_note")]
    if notes:
        lines += ["", *notes]
    lines += ["", "## Targets" + (" (computed for the format only: a dry run measures nothing)" if args.dry_run else ""),
              "", "| target | value | run | status | how |", "|---|---|---|---|---|"]
    for c in checks:
        value = _num(c["value"], "{:.3f}" if "flat" in c["target"] else "{:.2f}")
        lines.append(f"| {c['target']} | {value} | {c['run'] or '–'} | {c['status']} | {c['how']} |")
    lines += ["", "## Where a steady chunk's time goes (profile)"] + profile_lines(folder, args.dry_run)
    lines += ["", "## Attention kernels at the steady shape"] + attention_lines(folder)
    lines += ["", "## Op count"] + op_count_lines(folder)
    lines += ["", "## Golden cases"] + (golden_lines(folder) or ["", "No golden report."])
    steps, for_time = step_lines(folder)
    lines += ["", "## Steps and time", ""] + steps
    lines += ["", "Skipped for time: " + (", ".join(for_time) if for_time else "none") + "."]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps({"dry_run": args.dry_run, "environment": env, "runs": rows,
                                                     "targets": checks, "skipped_for_time": for_time,
                                                     "profile": _profile(folder)}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


def compiled_run_failed(path: Path) -> bool:
    """Whether a --compile run was made and did not give compiled figures: it failed, timed out, or its
    compiled block fell back to eager. (Not made, or skipped: False — nothing to make up for.)"""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    status = (report.get("device_check") or {}).get("status")
    if status in (None, "skipped"):
        return False
    return status != "ok" or bool((report.get("compile") or {}).get("fallback"))


def fell_back(args) -> int:
    """Exit 0 when the run in args.report needs a make-up run (see compiled_run_failed), else 1."""
    return 0 if compiled_run_failed(args.report) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("record")
    r.add_argument("--name", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--report", type=Path)
    r.add_argument("--log", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--command", default="")
    r.add_argument("--variant", default="")
    r.add_argument("--note", default="")
    r.add_argument("--timeout", type=int, default=0)
    r.add_argument("--order", type=int, default=0, help="position in the sequence (the table keeps it)")
    r.add_argument("--kind", default="bench", choices=KINDS)
    r.add_argument("--estimate", type=float, default=0.0, help="seconds the step was expected to take")
    s = sub.add_parser("skip")
    s.add_argument("--name", required=True)
    s.add_argument("--reason", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--command", default="")
    s.add_argument("--variant", default="")
    s.add_argument("--order", type=int, default=0, help="position in the sequence (the table keeps it)")
    s.add_argument("--kind", default="bench", choices=KINDS)
    s.add_argument("--estimate", type=float, default=0.0)
    m = sub.add_parser("summary")
    m.add_argument("folder", type=Path)
    m.add_argument("--dry-run", action="store_true")
    q = sub.add_parser("requirements")
    q.add_argument("pyproject", type=Path)
    h = sub.add_parser("source-hash", help="sha256 of a source tree (paths and bytes)")
    h.add_argument("folder", type=Path)
    u = sub.add_parser("unpack-ffmpeg", help="unpack the wheels folder's ffmpeg*.xz into DEST; print its path")
    u.add_argument("wheels", type=Path)
    u.add_argument("dest", type=Path)
    f = sub.add_parser("fell-back", help="exit 0 when this --compile run failed or fell back to eager")
    f.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    return {"record": record, "skip": skip, "summary": summary, "requirements": requirements,
            "fell-back": fell_back, "source-hash": print_source_hash,
            "unpack-ffmpeg": print_unpacked_ffmpeg}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
