#!/usr/bin/env python3
"""`make bench-compare`: livefilter and the original Python design, side by side, in one run.

One sora-endpoint is the sink for everything: it holds every publisher to --bitrate-kbps
(`--max-bitrate-kbps`: `b=AS`/`b=TIAS` in its offers) and reads the frame id the sender painted
into each decoded picture. For each round, for each filter, it runs livefilter
(`livefilter-relay serve`, publishing to the endpoint) and then the original design
(original.py: aiortc + multiprocessing queue + sora-sdk) with the same pre-encoded 1280x720
30 fps VP8 input from sender.py, and measures over --seconds after a --warmup:

- cores used: utime + stime of the system's process tree (multiprocessing children included)
  over the window, divided by its length;
- peak RSS: the largest sum of the tree's resident sizes, sampled every 0.5 s from start to the
  end of the window (PSS, which counts shared pages once, is in the JSON);
- CPU per frame at sink: cores / fps at sink, comparable when a starved system delivers fewer;
- fps at sink: new frames (distinct ids) the endpoint decoded in the window per second, and
  its received bitrate (frames repeated or without a readable id are counted in the JSON);
- sender->sink latency: arrival of a frame's first packet at the endpoint minus the moment the
  sender handed that frame (by its id) to its packetizer; p50/p95/p99 over all runs' frames;
- the machine's other load: busy cores (from /proc/stat) minus the system, sender and
  endpoint. Runs above --max-other-load cores are reported but left out of the summary
  (unless every run of a cell is; then all are kept, marked). A run whose stream stopped
  reaching the sink before the end of the window is left out too, and counted.

Prints a table and the ratios, and writes the whole result (every run, every figure) to
--out-dir/result-<UTC time>.json and latest.json, and the table to latest.md.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

SYSTEMS = ("livefilter", "original")
TICKS = os.sysconf("SC_CLK_TCK")
# A run whose sink saw no frame in the last STALL_S seconds of the window lost its stream.
STALL_S = 2.0
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- /proc ------------------------------------------------------------------------------------


def proc_stat(pid):
    """(ppid, utime + stime ticks, rss bytes) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE


def pss_bytes(pid):
    """Proportional set size of `pid` (shared pages divided among their users), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(root):
    """{pid: (ticks, rss)} for `root` and all its descendants."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = proc_stat(int(name))
            if s is not None:
                stats[int(name)] = s
    members, frontier = set(), [root]
    children = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in members:
            members.add(pid)
            frontier.extend(children.get(pid, []))
    return {pid: stats[pid][1:] for pid in members}


def tree_ticks(roots):
    """{pid: cpu ticks} over the trees of `roots`."""
    out = {}
    for root in roots:
        out.update({pid: t for pid, (t, _) in tree(root).items()})
    return out


def cores_between(before, after, seconds):
    """CPU cores used between two tree_ticks snapshots (processes born in between count whole)."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks / TICKS / seconds


def machine_busy_ticks():
    """Busy CPU ticks of the whole machine (all but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


class MemorySampler(threading.Thread):
    """Samples the summed RSS (and PSS) of a process tree until stopped."""

    def __init__(self, root, period=0.5):
        super().__init__(daemon=True)
        self.root, self.period = root, period
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            members = tree(self.root)
            self.peak_rss = max(self.peak_rss, sum(rss for _, rss in members.values()))
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(pid) for pid in members))
            self.peak_processes = max(self.peak_processes, len(members))
            self.halt.wait(self.period)


# --- processes and HTTP -----------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_http_ok(url, deadline_s, proc):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {deadline_s} s")


def start(cmd, log_path, env=None):
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc, grace=15.0):
    """SIGTERM to the process group, SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# --- one run ----------------------------------------------------------------------------------


def percentile(sorted_values, q):
    """Linear-interpolated percentile `q` (0..100) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def sink_connection(endpoint, channel):
    conns = http_json(f"{endpoint}/api/connections?channel_id={channel}")
    live = [c for c in conns if c["state"] == "connected"] or conns
    return live[-1] if live else None


def run_once(args, endpoint, endpoint_proc, system, filter_name, index, work):
    """Runs one system with one filter; returns the run's figures."""
    channel = f"{system}-{filter_name}-{index}"
    port = free_port()
    log = os.path.join(work, f"{channel}.log")
    signaling = endpoint.replace("http://", "ws://") + "/signaling"
    if system == "livefilter":
        env = dict(os.environ)
        env.setdefault("ORT_DYLIB_PATH", os.path.abspath(".cache/onnxruntime/libonnxruntime.so"))
        env.setdefault("LIVEFILTER_MODELS_DIR", os.path.abspath("models"))
        cmd = [args.relay, "serve", "--listen", f"127.0.0.1:{port}", "--filter", filter_name,
               "--sora-signaling-url", signaling, "--channel-id", channel, "--codec", "vp8",
               "--bitrate-kbps", str(args.bitrate_kbps), "--no-preview", *args.relay_arg]
        proc = start(cmd, log, env)
        ready, status_url = f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/status"
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [args.python, os.path.join(here, "original.py"), "--listen", f"127.0.0.1:{port}",
               "--signaling-url", signaling, "--channel-id", channel, "--filter", filter_name,
               "--model", os.path.abspath("models/selfie.onnx"), "--bitrate-kbps", str(args.bitrate_kbps)]
        proc = start(cmd, log)
        ready, status_url = f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/stats"
    memory = MemorySampler(proc.pid)
    memory.start()
    sender = None
    sent_path = os.path.join(work, f"{channel}.sent.json")
    try:
        wait_http_ok(ready, 60, proc)
        here = os.path.dirname(os.path.abspath(__file__))
        sender = start([args.python, os.path.join(here, "sender.py"), "send", "--ivf", args.ivf,
                        "--offer-url", f"http://127.0.0.1:{port}/offer", "--out", sent_path,
                        "--seconds", str(args.warmup + args.seconds + 5)],
                       os.path.join(work, f"{channel}.sender.log"))
        time.sleep(args.warmup)
        if sender.poll() is not None:
            raise RuntimeError(f"the sender ended early ({sender.returncode}); see {channel}.sender.log")
        conn = sink_connection(endpoint, channel)
        if conn is None:
            raise RuntimeError(f"nothing arrived at the endpoint for channel {channel} after the warm-up")
        roots = {"system": [proc.pid], "sender": [sender.pid], "endpoint": [endpoint_proc.pid]}
        ticks0 = {k: tree_ticks(v) for k, v in roots.items()}
        busy0, t0 = machine_busy_ticks(), time.time()
        bytes0 = conn["video"]["bytes"]
        time.sleep(args.seconds)
        ticks1 = {k: tree_ticks(v) for k, v in roots.items()}
        busy1, t1 = machine_busy_ticks(), time.time()
        window = t1 - t0
        cores = {k: cores_between(ticks0[k], ticks1[k], window) for k in roots}
        conn = http_json(f"{endpoint}/api/connections/{conn['connection_id']}?frames={args.frame_ring}")
        try:
            status = http_json(status_url)
        except (urllib.error.URLError, OSError, ValueError):
            status = None
    finally:
        if sender is not None:
            stop(sender)
        memory.halt.set()
        memory.join()
        stop(proc)
    with open(sent_path) as f:
        sent_run = json.load(f)
    sent = sent_run["sent_ms"]
    # From POST /offer to the sink's first decoded frame of the session (warm model: both
    # systems load theirs at startup, before the offer).
    first = [fr["arrival_ms"] for fr in conn["frames"] if fr.get("seq") == 0]
    first_frame_ms = round(first[0] - sent_run["offer_posted_ms"], 1) if first and "offer_posted_ms" in sent_run else None
    frames = [fr for fr in conn["frames"] if t0 * 1000 <= fr["arrival_ms"] <= t1 * 1000]
    seen, latencies, unreadable, repeats = set(), [], 0, 0
    for fr in frames:
        fid = fr["frame_id"]
        if fid is None or fid >= len(sent) or sent[fid] is None:
            unreadable += 1
        elif fid in seen:
            repeats += 1
        else:
            seen.add(fid)
            latencies.append(fr["arrival_ms"] - sent[fid])
    last_arrival_s = (frames[-1]["arrival_ms"] / 1000 - t0) if frames else 0.0
    machine = (busy1 - busy0) / TICKS / window
    other = machine - sum(cores.values())
    sizes = sorted({f"{fr['width']}x{fr['height']}" for fr in frames})
    run = {
        "system": system,
        "filter": filter_name,
        "channel": channel,
        "window_s": round(window, 3),
        "cores": round(cores["system"], 4),
        "sender_cores": round(cores["sender"], 4),
        "endpoint_cores": round(cores["endpoint"], 4),
        "other_load_cores": round(other, 4),
        "peak_rss_mb": round(memory.peak_rss / 1e6, 1),
        "peak_pss_mb": round(memory.peak_pss / 1e6, 1),
        "processes": memory.peak_processes,
        "sink_fps": round(len(seen) / window, 2),
        "sink_decoded_fps": round(len(frames) / window, 2),
        "sink_kbps": round((conn["video"]["bytes"] - bytes0) * 8 / window / 1000, 1),
        "sink_sizes": sizes,
        "first_frame_ms": first_frame_ms,
        "last_frame_at_s": round(last_arrival_s, 2),
        "complete": last_arrival_s >= window - STALL_S,
        "frames_sent_in_run": sum(t is not None for t in sent),
        "keyframe_requests_answered": sent_run.get("keyframe_requests"),
        "frames_at_sink": len(frames),
        "frames_without_id": unreadable,
        "frames_repeated": repeats,
        "latency_ms": {f"p{q}": round(percentile(sorted(latencies), q), 1) if latencies else None
                       for q in (50, 95, 99)},
        "latencies_ms": [round(x, 2) for x in latencies],
        "sink_frames": [[round(fr["arrival_ms"] - t0 * 1000, 1), fr["frame_id"], int(fr["keyframe"])] for fr in frames],
        "status": status,
    }
    return run


# --- summary ----------------------------------------------------------------------------------


def is_complete(run):
    """Whether frames reached the sink until the end of the window (older results: from their frames)."""
    if "complete" in run:
        return run["complete"]
    frames = run.get("sink_frames") or []
    return bool(frames) and frames[-1][0] / 1000 >= run["window_s"] - STALL_S


def summarise(runs, max_other):
    cells = {}
    for run in runs:
        cells.setdefault((run["filter"], run["system"]), []).append(run)
    summary = []
    for (filter_name, system), group in cells.items():
        whole = [r for r in group if is_complete(r)] or group
        quiet = [r for r in whole if r.get("other_load_cores", 0) <= max_other]
        kept = quiet or whole
        lat = sorted(x for r in kept for x in r["latencies_ms"])
        mean = lambda key: round(sum(r[key] for r in kept) / len(kept), 3)  # noqa: E731
        summary.append({
            "system": system,
            "filter": filter_name,
            "runs": len(group),
            "runs_kept": len(kept),
            "runs_incomplete": sum(not is_complete(r) for r in group),
            "all_runs_loaded": not quiet,
            "cores": mean("cores"),
            "peak_rss_mb": mean("peak_rss_mb"),
            "peak_pss_mb": mean("peak_pss_mb"),
            "sink_fps": mean("sink_fps"),
            "sink_kbps": mean("sink_kbps"),
            "other_load_cores": mean("other_load_cores"),
            "first_frame_ms": median([r["first_frame_ms"] for r in kept if r.get("first_frame_ms") is not None]),
            "latency_ms": {f"p{q}": round(percentile(lat, q), 1) if lat else None for q in (50, 95, 99)},
        })
    return summary


def median(values):
    """The median, or None for no values."""
    return round(percentile(sorted(values), 50), 1) if values else None


def per_frame(s):
    """CPU milliseconds per frame delivered to the sink (cores / fps): comparable even when a
    starved system delivers fewer frames."""
    return f"{s['cores'] * 1000 / s['sink_fps']:.0f} ms" if s["sink_fps"] else "–"


def table(summary):
    names = {"livefilter": "livefilter", "original": "original design (aiortc + mp queue + sora-sdk)"}
    lines = ["| system | filter | cores used | peak RSS | fps at sink | CPU per frame at sink | kbit/s at sink "
             "| sender→sink latency p50 / p95 / p99 | offer→first frame at sink (median) | runs (kept) | other load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lat = s["latency_ms"]
        fmt = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        lines.append(
            f"| {names[s['system']]} | {s['filter']} | {s['cores']:.2f} | {s['peak_rss_mb']:.0f} MB "
            f"| {s['sink_fps']:.1f} | {per_frame(s)} | {s['sink_kbps']:.0f} | {fmt(lat['p50'])} / {fmt(lat['p95'])} / "
            f"{fmt(lat['p99'])} ms | {fmt(s.get('first_frame_ms'))} ms | {s['runs']} ({s['runs_kept']}{', all loaded' if s['all_runs_loaded'] else ''}"
            f"{', %d stream lost' % s['runs_incomplete'] if s.get('runs_incomplete') else ''}) "
            f"| {s['other_load_cores']:.2f} |")
    return "\n".join(lines)


def ratios(summary):
    """original / livefilter for each filter: how many times more the original costs."""
    out = {}
    by = {(s["filter"], s["system"]): s for s in summary}
    for filter_name in sorted({s["filter"] for s in summary}):
        lf, og = by.get((filter_name, "livefilter")), by.get((filter_name, "original"))
        if not lf or not og:
            continue
        div = lambda a, b: round(a / b, 2) if a is not None and b else None  # noqa: E731
        out[filter_name] = {
            "cores": div(og["cores"], lf["cores"]),
            "cpu_per_frame": div(og["cores"] / og["sink_fps"] if og["sink_fps"] else None,
                                 lf["cores"] / lf["sink_fps"] if lf["sink_fps"] else None),
            "peak_rss": div(og["peak_rss_mb"], lf["peak_rss_mb"]),
            **{f"latency_{q}": div(og["latency_ms"][q], lf["latency_ms"][q]) for q in ("p50", "p95", "p99")},
            "fps_livefilter_over_original": div(lf["sink_fps"], og["sink_fps"]),
        }
    return out


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except OSError:
        mem_kb = 0
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1e6, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()}


def binary_info(path):
    """Where a binary is, when it was built and its SHA-256 (which build was measured)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    built = datetime.datetime.fromtimestamp(os.stat(path).st_mtime, datetime.timezone.utc)
    return {"path": os.path.abspath(path), "built": built.isoformat(timespec="seconds"), "sha256": digest.hexdigest()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relay", default="target/release/livefilter-relay")
    p.add_argument("--endpoint", default="target/release/sora-endpoint")
    p.add_argument("--python", default=sys.executable, help="interpreter for original.py and sender.py")
    p.add_argument("--ivf", required=True, help="the sender's input (sender.py prepare)")
    p.add_argument("--runs", type=int, default=2, help="rounds; each runs every filter on both systems")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=10.0, help="streaming before the window")
    p.add_argument("--filters", default="passthrough,background-blur")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of livefilter,original")
    p.add_argument("--bitrate-kbps", type=int, default=1000, help="both systems' bitrate, enforced by the endpoint")
    p.add_argument("--relay-arg", action="append", default=[],
                   help="an extra livefilter-relay flag (repeatable; write --relay-arg=--transcode-passthrough)")
    p.add_argument("--max-other-load", type=float, default=0.3, help="cores of other load above which a run is left out")
    p.add_argument("--frame-ring", type=int, default=4000, help="frame summaries the endpoint keeps")
    p.add_argument("--out-dir", default="target/bench-compare")
    args = p.parse_args()
    filters = [f for f in args.filters.split(",") if f]
    systems = [s for s in args.systems.split(",") if s]
    if any(s not in SYSTEMS for s in systems):
        p.error(f"--systems: one of {SYSTEMS}")
    if (args.warmup + args.seconds + 5) * 30 >= 8192:
        p.error("warmup + seconds must stay under 4.5 minutes (frame ids wrap at 8192)")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = os.path.join(args.out_dir, stamp)
    os.makedirs(work, exist_ok=True)
    info = machine_info()
    print(f"bench-compare: {info['cpu']}, {info['cores']} cores, load {info['loadavg_at_start']}; "
          f"{args.runs} round(s) x {filters} x {systems}, {args.warmup:.0f} s warm-up + {args.seconds:.0f} s; "
          f"logs in {work}", flush=True)

    endpoint_proc = subprocess.Popen(
        [args.endpoint, "--listen", "127.0.0.1:0", "--max-bitrate-kbps", str(args.bitrate_kbps),
         "--frame-ring", str(args.frame_ring), "--ping-interval-secs", "0"],
        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "endpoint.log"), "w"), text=True,
        start_new_session=True)
    first = endpoint_proc.stdout.readline()
    if "listening on " not in first:
        raise SystemExit(f"sora-endpoint did not start: {first!r}")
    endpoint = first.split("listening on ", 1)[1].split()[0]
    runs = []
    try:
        for index in range(args.runs):
            for filter_name in filters:
                for system in systems:
                    started = time.monotonic()
                    try:
                        run = run_once(args, endpoint, endpoint_proc, system, filter_name, index, work)
                    except (RuntimeError, OSError, ValueError, KeyError) as err:
                        print(f"  {system:10} {filter_name:16} run {index + 1}: FAILED: {err}", flush=True)
                        runs.append({"system": system, "filter": filter_name, "run": index, "error": str(err)})
                        continue
                    runs.append(run)
                    lat = run["latency_ms"]
                    print(f"  {system:10} {filter_name:16} run {index + 1}: cores {run['cores']:.2f} "
                          f"rss {run['peak_rss_mb']:.0f} MB fps {run['sink_fps']:.1f} {run['sink_kbps']:.0f} kbit/s "
                          f"latency {lat['p50']} / {lat['p95']} / {lat['p99']} ms; other load "
                          f"{run['other_load_cores']:.2f}, sender {run['sender_cores']:.2f} "
                          f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        stop(endpoint_proc, grace=10)
    good = [r for r in runs if "error" not in r]
    summary = summarise(good, args.max_other_load)
    summary.sort(key=lambda s: (filters.index(s["filter"]), systems.index(s["system"])))
    result = {
        "started": stamp,
        "binaries": {name: binary_info(path) for name, path in (("relay", args.relay), ("endpoint", args.endpoint))},
        "machine": {**info, "loadavg_at_end": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items()},
        "summary": summary,
        "ratios_original_over_livefilter": ratios(summary),
        "runs": runs,
    }
    path = os.path.join(args.out_dir, f"result-{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    shutil.copyfile(path, os.path.join(args.out_dir, "latest.json"))
    md = table(summary)
    with open(os.path.join(args.out_dir, "latest.md"), "w") as f:
        f.write(md + "\n")
    print()
    print(md)
    print()
    for filter_name, r in result["ratios_original_over_livefilter"].items():
        print(f"{filter_name}: the original uses {r['cores']}x the cores ({r['cpu_per_frame']}x the CPU per frame "
              f"at the sink) and {r['peak_rss']}x the memory of livefilter; its latency is {r['latency_p50']}x / {r['latency_p95']}x / {r['latency_p99']}x "
              f"(p50 / p95 / p99); livefilter's fps at sink is {r['fps_livefilter_over_original']}x")
    print(f"\nresult: {path}")
    return 0 if len(good) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
