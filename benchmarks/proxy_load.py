"""Load test of the guard proxy on loopback: N concurrent clients × M requests, direct vs through the proxy.

Starts (as subprocesses, all on 127.0.0.1) a scripted OpenAI-compatible upstream that answers a fixed
benign text, or a fixed harmful one for every 10th request, and `mllm-protector serve` in front of it
(shipped detector, refusal detoxifier). Then runs the same load four times: non-streaming and streaming,
directly against the upstream and through the proxy. Added latency = proxy percentile − direct
percentile of the same mode. A request is *lost* when no complete answer came back (transport error,
timeout, or a stream without `data: [DONE]`); *errors* are complete answers with a non-2xx status.

    python benchmarks/proxy_load.py                    # 50 clients × 20 requests, writes docs/results/proxy_load.md
    python benchmarks/proxy_load.py --clients 5 --requests 4 --output /tmp/smoke.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import LOOPBACK, free_port, stop_processes, wait_ready  # noqa: E402

BENIGN = ("The image shows a golden retriever lying on a green lawn next to a red ball. The sky is clear and "
          "there is a wooden fence in the background. The dog looks relaxed and seems to be enjoying the sun.")
HARMFUL = ("Here is a step-by-step guide to hacking your neighbor's wifi and stealing their bank passwords: first "
           "install aircrack-ng, capture the handshake, crack it, then run a phishing page.")
MESSAGES = [{"role": "user", "content": "What is in this picture?"}]


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    lost: int = 0
    lost_reasons: Counter = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + self.lost

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, max(0, round(q / 100 * len(data)) - 1))]


async def one_request(http: httpx.AsyncClient, url: str, model: str, stream: bool, phase: Phase) -> None:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    t0 = time.perf_counter()
    try:
        if not stream:
            reply = await http.post(url, json=body)
            data = reply.json()
            if reply.status_code == 200 and "protector" in data:
                phase.actions[data["protector"]["action"]] += 1
        else:
            async with http.stream("POST", url, json=body) as reply:
                done = False
                async for line in reply.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"protector"' in line:
                        phase.actions[json.loads(line[6:])["protector"]["action"]] += 1
                if reply.status_code == 200 and not done:
                    phase.lost += 1
                    phase.lost_reasons["stream without [DONE]"] += 1
                    return
    except (httpx.HTTPError, ValueError) as exc:
        phase.lost += 1
        phase.lost_reasons[type(exc).__name__] += 1
        return
    phase.latencies_ms.append((time.perf_counter() - t0) * 1000)
    phase.statuses[reply.status_code] += 1


async def run_phase(name: str, base: str, stream: bool, clients: int, requests: int, timeout: float) -> Phase:
    phase = Phase(name)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        async def client(c: int) -> None:
            for r in range(requests):
                model = "harmful" if (c * requests + r) % 10 == 9 else "benign"
                await one_request(http, base + "/chat/completions", model, stream, phase)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        phase.wall_s = time.perf_counter() - t0
    return phase


def serve_upstream(port: int) -> None:
    """Internal: run the scripted upstream in this process (the benchmark starts it as a subprocess)."""
    import uvicorn

    from tests.servers import scripted_upstream

    uvicorn.run(scripted_upstream({"benign": BENIGN, "harmful": HARMFUL}), host=LOOPBACK, port=port, log_level="warning")


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def hist_quantile(text: str, name: str, labels: str, q: float) -> float:
    """Upper bucket bound holding quantile q of a Prometheus histogram (labels like 'mode="chat"')."""
    buckets = []
    for match in re.finditer(rf'^{re.escape(name)}_bucket{{le="([^"]+)",{re.escape(labels)}}} ([0-9.e+-]+)$', text, re.M):
        buckets.append((float(match.group(1)), float(match.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= q * total)


def breakdown(text: str, mode: str) -> str:
    label = f'mode="{mode}"'
    guard = [hist_quantile(text, "mllm_protector_guard_seconds", label, q) for q in (0.5, 0.95)]
    upstream = [hist_quantile(text, "mllm_protector_upstream_seconds", label, q) for q in (0.5, 0.95)]
    return f"{mode}: guard p50 ≤ {guard[0]:g}, p95 ≤ {guard[1]:g}; upstream p50 ≤ {upstream[0]:g}, p95 ≤ {upstream[1]:g}"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    device = f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU only"
    return (f"{cpu}, {os.cpu_count()} cores visible (shared with other jobs), {device}; Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def report(args: argparse.Namespace, phases: dict[str, Phase], guard: dict[str, Any], metrics_text: str, command: str) -> str:
    rows = []
    for mode in ("chat", "stream"):
        direct, proxied = phases[f"direct-{mode}"], phases[f"proxy-{mode}"]
        for phase in (direct, proxied):
            five = sum(n for s, n in phase.statuses.items() if s >= 500)
            errors = sum(n for s, n in phase.statuses.items() if s >= 400)
            added = (f"{phase.pct(50) - direct.pct(50):.0f} | {phase.pct(95) - direct.pct(95):.0f}"
                     if phase is proxied else "– | –")
            rows.append(f"| {phase.name} | {phase.sent} | {phase.statuses.get(200, 0)} | {errors} ({five} 5xx) | "
                        f"{phase.lost} | {phase.pct(50):.0f} | {phase.pct(95):.0f} | {added} | "
                        f"{phase.sent / phase.wall_s:.1f} |")
    actions = {name: dict(p.actions) for name, p in phases.items() if p.actions}
    batches = max(1.0, metric(metrics_text, "mllm_protector_detector_batch_size_count"))
    batch = metric(metrics_text, "mllm_protector_detector_batch_size_sum") / batches
    batch_ms = metric(metrics_text, "mllm_protector_detector_seconds_sum") / batches * 1000
    lost = {name: dict(p.lost_reasons) for name, p in phases.items() if p.lost_reasons}
    return "\n".join([
        "## Guard proxy load test",
        "",
        f"{args.clients} concurrent clients × {args.requests} requests per phase, loopback only; every 10th request's "
        "upstream answer is harmful. Upstream: a scripted OpenAI-compatible app answering fixed texts (so upstream "
        "time is near zero and the table shows the proxy's own cost). Proxy: `mllm-protector serve`, shipped "
        f"detector (threshold {guard.get('threshold', float('nan')):.3f}), refusal detoxifier, default stream window "
        "(sentence, 80–400 chars), fail-closed.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}. Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "| phase | sent | 200 | errors | lost | p50 ms | p95 ms | added p50 ms | added p95 ms | req/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Added latency = proxy percentile − direct percentile of the same mode (streaming: time to the end of the "
        f"stream). Verdicts returned by the proxy: {json.dumps(actions)}. Mean detector batch size under this load: "
        f"{batch:.1f} checks per forward pass (concurrent requests are scored together), {batch_ms:.0f} ms per batch "
        f"on average: the detector's CPU time is the bottleneck here, so latency ≈ queueing behind it "
        f"(load average during the run: {args.loadavg})."
        + (f" Lost requests by cause: {json.dumps(lost)}." if lost else ""),
        "",
        "Where the proxy's time goes (its own Prometheus histograms; bucket upper bounds in seconds): "
        + "; ".join(breakdown(metrics_text, mode) for mode in ("chat", "stream")) + ".",
        "",
    ])


async def main_async(args: argparse.Namespace) -> int:
    up_port, proxy_port = free_port(), free_port()
    upstream_url, proxy_url = f"http://{LOOPBACK}:{up_port}/v1", f"http://{LOOPBACK}:{proxy_port}/v1"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "_upstream", "--port", str(up_port)]))
        wait_ready(upstream_url + "/models", 60, procs[-1])
        serve = [sys.executable, "-m", "mllm_protector.cli", "serve", "--upstream", upstream_url, "--port", str(proxy_port),
                 "--detoxifier", "refusal"]
        log = open(args.proxy_log, "wb")
        procs.append(subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}))
        wait_ready(f"http://{LOOPBACK}:{proxy_port}/health", 300, procs[-1])
        guard = httpx.post(f"http://{LOOPBACK}:{proxy_port}/v1/guard", json={"response": BENIGN}, timeout=60).json()
        phases: dict[str, Phase] = {}
        # Warm-up (not measured): first detector calls and connection set-up.
        await run_phase("warmup", proxy_url, False, 4, 3, args.timeout)
        for mode, stream in (("chat", False), ("stream", True)):
            for where, base in (("direct", upstream_url), ("proxy", proxy_url)):
                name = f"{where}-{mode}"
                phases[name] = await run_phase(name, base, stream, args.clients, args.requests, args.timeout)
                p = phases[name]
                print(f"{name}: {p.sent} sent, {dict(p.statuses)}, lost {p.lost}, p50 {p.pct(50):.0f} ms, "
                      f"p95 {p.pct(95):.0f} ms, {p.wall_s:.1f} s", flush=True)
        metrics_text = httpx.get(f"http://{LOOPBACK}:{proxy_port}/metrics").text
        args.loadavg = " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"
    finally:
        stop_processes(procs)
    command = "python benchmarks/proxy_load.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    text = report(args, phases, guard, metrics_text, command)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)
    bad = sum(p.lost for p in phases.values()) + sum(n for p in phases.values() for s, n in p.statuses.items() if s >= 500)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="internal")
    up = sub.add_parser("_upstream", help=argparse.SUPPRESS)
    up.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="Requests per client, sequential.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Client timeout per request (s).")
    parser.add_argument("--output", default=str(ROOT / "docs" / "results" / "proxy_load.md"))
    parser.add_argument("--proxy-log", default="/tmp/proxy_load_serve.log")
    args = parser.parse_args()
    if args.internal == "_upstream":
        serve_upstream(args.port)
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
