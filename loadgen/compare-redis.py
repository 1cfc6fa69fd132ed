#!/usr/bin/env python3
"""holdfast against Redis on one machine, in one run.

Starts `holdfast serve --shards 1` and `redis-server`, each pinned to CPU 0,
drives each with `holdfast-loadgen` pinned to CPU 1 (same connections, same
requests in flight per connection, same workload and keys), and prints:

- the loopback ping-pong floor (p50/p99/p99.9),
- per durability (holdfast `--fsync never` vs Redis without persistence;
  holdfast `--fsync always` vs Redis `appendfsync always`) and workload
  (a: 50% read 50% update; c: read only): closed-loop peak throughput, and
  p50/p99/p99.9 per operation at an open-loop rate of half of each one's
  own peak (latency counted from the intended send time), and how far the
  generator itself fell behind its schedule (its send lag, p99.9), which
  is part of those latencies.

Usage (from the repository root, after `cargo build --release`):

    loadgen/compare-redis.py [--connections 50] [--pipeline 1]
        [--duration 10] [--records 100000] [--transport uring|glommio]
        [--json results.json]

Needs `redis-server` (Debian: `apt-get install redis-server`). Ports are
taken from the kernel (bound, then released) and both servers are stopped
at the end, whatever happens.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HOLDFAST = os.path.join(TARGET, "release", "holdfast")
LOADGEN = os.path.join(TARGET, "release", "holdfast-loadgen")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {seconds} s")


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_holdfast(durable, data_dir, transport):
    port = free_port()
    command = [
        "taskset", "-c", "0", HOLDFAST, "serve",
        "--data-dir", data_dir,
        "--listen", f"127.0.0.1:{port}",
        "--shards", "1",
        "--pin", "false",
        "--fsync", "always" if durable else "never",
        "--transport", transport,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process, port


def start_redis(durable, data_dir):
    port = free_port()
    command = [
        "taskset", "-c", "0", "redis-server",
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", data_dir,
        "--save", "",
        "--appendonly", "yes" if durable else "no",
        "--appendfsync", "always",
        "--daemonize", "no",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process, port


def loadgen(target, port, workload, args, rate=None, load=False):
    command = [
        LOADGEN, "--target", target, "--addr", f"127.0.0.1:{port}",
        "--workload", workload,
        "--records", str(args.records),
        "--value-size", "256",
        "--connections", str(args.connections),
        "--pipeline", str(args.pipeline),
        "--duration", f"{args.duration}s",
        "--warmup", "2s",
        "--cpu", "1",
        "--json",
    ]
    if not load:
        command.append("--skip-load")
    if rate is not None:
        command += ["--rate", str(rate)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(output.stdout)


def ops(report):
    return {
        name: {key: op[key] for key in ("count", "errors", "p50_us", "p99_us", "p999_us", "max_us")}
        for name, op in report["run"]["ops"].items()
    }


def measure(target, port, args):
    results = {}
    loaded = False
    for workload in ("c", "a"):
        # The first run loads the records; the rest reuse them.
        closed = loadgen(target, port, workload, args, load=not loaded)
        loaded = True
        peak = closed["run"]["throughput_ops"]
        half = max(1, int(peak / 2))
        opened = loadgen(target, port, workload, args, rate=half)
        results[workload] = {
            "peak_ops": peak,
            "peak_errors": closed["run"]["errors"],
            "half_rate": half,
            "half_throughput_ops": opened["run"]["throughput_ops"],
            "half_errors": opened["run"]["errors"],
            "half_ops": ops(opened),
            # How far behind its schedule the generator itself fell: part
            # of every latency above, since latency counts from the
            # intended send time.
            "half_send_lag": opened["run"]["send_lag"],
        }
    return results


def table(results):
    lines = []
    ping = results["ping"]
    lines.append(
        f"loopback ping-pong: p50 {ping['p50_us']:.1f} us, p99 {ping['p99_us']:.1f} us, "
        f"p99.9 {ping['p999_us']:.1f} us, max {ping['max_us']:.1f} us"
    )
    for durability, by_target in results["runs"].items():
        lines.append("")
        lines.append(f"durability {durability}")
        lines.append(
            f"{'target':10} {'wl':3} {'peak ops/s':>11} {'ratio':>6} {'half rate':>10} "
            f"{'op':7} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'max us':>8} {'errors':>6} "
            f"{'lag p99.9':>9}"
        )
        for workload in ("a", "c"):
            redis_peak = by_target["redis"][workload]["peak_ops"]
            for target in ("holdfast", "redis"):
                run = by_target[target][workload]
                ratio = run["peak_ops"] / redis_peak if redis_peak else 0.0
                for name, op in sorted(run["half_ops"].items()):
                    lines.append(
                        f"{target:10} {workload:3} {run['peak_ops']:11.0f} {ratio:6.2f} "
                        f"{run['half_rate']:10d} {name:7} {op['p50_us']:8.1f} {op['p99_us']:8.1f} "
                        f"{op['p999_us']:9.1f} {op['max_us']:8.1f} "
                        f"{run['peak_errors'] + run['half_errors']:6d} "
                        f"{(run['half_send_lag'] or {}).get('p999_us', 0.0):9.1f}"
                    )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--transport", default="uring", choices=("uring", "glommio"))
    parser.add_argument("--durability", default="both", choices=("off", "on", "both"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    for program in (HOLDFAST, LOADGEN):
        if not os.path.exists(program):
            sys.exit(f"{program} is missing: run `cargo build --release` first")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is missing (apt-get install redis-server)")

    ping = subprocess.run(
        [LOADGEN, "--ping", "--duration", "5s", "--cpu", "1", "--json"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    ping = json.loads(ping.stdout)
    ping = ping.get("ping", ping)
    results = {"config": vars(args), "ping": ping, "runs": {}}
    durabilities = {"off": [False], "on": [True], "both": [False, True]}[args.durability]
    for durable in durabilities:
        label = "fsync always / appendfsync always" if durable else "none (no fsync / no persistence)"
        by_target = {}
        for target in ("holdfast", "redis"):
            with tempfile.TemporaryDirectory(prefix=f"compare-{target}-") as data_dir:
                if target == "holdfast":
                    process, port = start_holdfast(durable, data_dir, args.transport)
                else:
                    process, port = start_redis(durable, data_dir)
                try:
                    by_target[target] = measure(target, port, args)
                finally:
                    stop(process)
            print(f"measured {target}, durability {label}", file=sys.stderr)
        results["runs"][label] = by_target
    print(table(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
