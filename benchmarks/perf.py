"""Performance figures of the guard in one run, each beside its in-run reference (issue #11).

Measures what a user gets with the defaults, through public entry points only (the Python API, the
`mllm-protector` CLI and the proxy as subprocesses), so the same script can be run on an older checkout
for a before/after comparison:

1. `HarmDetector.score` on 128-token answers (batch 256) against a plain torch fp32 forward of the same
   merged model in the same process;
2. `mllm-protector score` on N real answers (wall time, scores kept for comparison);
3. the proxy (refusal detoxifier) in front of a scripted upstream on loopback: added latency of one
   request, 20 concurrent clients, time to the first streamed content — each against the upstream direct;
4. detoxification of harmful answers with the default local detoxifier;
5. cold starts: `import mllm_protector`, `score` of one line, `protect` of one benign line;
6. the ceiling: the CPU's measured GEMM peaks (fp32, int8) and the fraction of them each detector path
   reaches, on one thread in CPU seconds (the bound a figure cannot pass on this machine).

    python benchmarks/perf.py --json runs/perf_after.json
    python benchmarks/perf.py --render runs/perf_before.json runs/perf_after.json --out docs/results/perf.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxy_load import BENIGN, MESSAGES  # noqa: E402
from tests.servers import LOOPBACK, free_port, stop_processes, wait_ready  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
#: Answer sources for the CLI and detoxification figures (none of the test-only sets).
SOURCES = ["jailbreakbench", "pku_saferlhf", "gptfuzz_labeled", "vicuna80", "llava_coco"]
CLI = [sys.executable, "-m", "mllm_protector.cli"]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile q (0-100) of `values`."""
    data = sorted(values)
    return data[min(len(data) - 1, max(0, round(q / 100 * len(data)) - 1))] if data else float("nan")


def machine() -> dict[str, Any]:
    """CPU model, visible cores, load average, library versions: the facts the figures depend on."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    facts: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                             "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                             "loadavg_start": os.getloadavg()[0], "backend": os.environ.get("MLLM_PROTECTOR_BACKEND", "auto")}
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        facts["onnxruntime"] = None
    try:
        import llama_cpp

        facts["llama_cpp"] = llama_cpp.__version__
    except ImportError:
        facts["llama_cpp"] = None
    return facts


def real_answers(n: int, seed: int, label: int | None = None) -> list[dict[str, Any]]:
    """n labelled (query, response) answers from the shared data, drawn with a fixed seed."""
    from mllm_protector.data import load_corpus

    pool = [e for e in load_corpus(None, SOURCES).examples if label is None or e.label == label]
    pool.sort(key=lambda e: (e.source, e.response))
    return [{"query": e.query, "response": e.response} for e in random.Random(seed).sample(pool, min(n, len(pool)))]


def timed(fn: Any, repeat: int) -> list[float]:
    """Wall seconds of `repeat` calls of fn()."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# --- 1. detector throughput -----------------------------------------------------------------------
def detector_figures(n: int, batch: int, seed: int) -> dict[str, Any]:
    """Answers/s of `HarmDetector.score` (default path) and of a plain torch fp32 forward on 128-token answers."""
    import torch

    from mllm_protector import HarmDetector
    from mllm_protector.config import PRETRAINED_DIR
    from mllm_protector.detector import load_trainable

    model, tokenizer, _ = load_trainable(PRETRAINED_DIR / "detector-default")
    plain = model.merge_and_unload().eval()
    texts = []
    for a in real_answers(4 * n, seed):
        ids = tokenizer(a["response"], add_special_tokens=False)["input_ids"]
        if len(ids) >= 126:
            texts.append(tokenizer.decode(ids[:126]))
        if len(texts) == n:
            break
    encoded = tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")

    def forward() -> None:
        with torch.inference_mode():
            for s in range(0, len(texts), batch):
                plain(**{k: v[s : s + batch] for k, v in encoded.items()})

    detector = HarmDetector.from_pretrained("default")
    detector.score(texts[:batch], batch_size=batch)  # warm-up
    forward()
    # Interleaved, best of 3, so both see the same machine load.
    ref, ours = [], []
    for _ in range(3):
        ref += timed(forward, 1)
        ours += timed(lambda: detector.score(texts, batch_size=batch), 1)
    one = timed(lambda: detector.score([BENIGN]), 30)
    twenty = timed(lambda: detector.score([f"{BENIGN} ({i})" for i in range(20)]), 10)  # what 20 clients ask at once
    return {"n": len(texts), "batch": batch, "tokens": int(encoded["input_ids"].shape[1]),
            "plain_torch_per_s": len(texts) / min(ref), "score_per_s": len(texts) / min(ours),
            "one_short_ms_p50": 1000 * statistics.median(one), "twenty_short_ms_p50": 1000 * statistics.median(twenty)}


# --- 2. CLI score on real answers ------------------------------------------------------------------
def cli_score(n: int, seed: int, work: Path) -> dict[str, Any]:
    """Wall time of `mllm-protector score` on n real answers (model loading included) and its scores."""
    src, out = work / "answers.jsonl", work / "scored.jsonl"
    answers = real_answers(n, seed + 1)
    src.write_text("".join(json.dumps(a) + "\n" for a in answers))
    t0 = time.perf_counter()
    subprocess.run([*CLI, "score", "-i", str(src), "-o", str(out), "--no-resume"], check=True, env=ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    return {"n": len(answers), "mean_chars": statistics.mean(len(a["response"]) for a in answers), "wall_s": wall,
            "scores": scores}


# --- 3. proxy --------------------------------------------------------------------------------------
async def _request(http: httpx.AsyncClient, url: str, stream: bool) -> tuple[float, float]:
    """(seconds to the first content, seconds to the complete answer) of one benign chat completion."""
    body = {"model": "benign", "messages": MESSAGES, "stream": stream}
    t0 = time.perf_counter()
    if not stream:
        reply = await http.post(url, json=body)
        reply.raise_for_status()
        took = time.perf_counter() - t0
        return took, took
    first = float("nan")
    async with http.stream("POST", url, json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if first != first and line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"] if json.loads(line[6:]).get("choices") else {}
                if delta.get("content"):
                    first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


async def _load(url: str, clients: int, requests: int, stream: bool) -> tuple[list[float], list[float]]:
    """First-content and total latencies (ms) of `clients` concurrent clients sending `requests` each."""
    firsts: list[float] = []
    totals: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        async def client() -> None:
            for _ in range(requests):
                first, total = await _request(http, url, stream)
                firsts.append(1000 * first)
                totals.append(1000 * total)

        await asyncio.gather(*(client() for _ in range(clients)))
    return firsts, totals


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process, and by this one (the load generator)."""
    import psutil

    def used(proc: psutil.Process) -> float:
        return sum(proc.cpu_times()[:2]) + sum(sum(c.cpu_times()[:2]) for c in proc.children(recursive=True))

    return {**{name: used(psutil.Process(pid)) for name, pid in pids.items()}, "clients": time.process_time()}


def _loaded(url: str, clients: int, requests: int, stream: bool, pids: dict[str, int]) -> dict[str, Any]:
    """One closed-loop load phase with the CPU milliseconds per request of every process taking part.

    Each client sends its next request when the last one is answered, so by Little's law the mean latency is
    clients / throughput, and throughput is at most cores / (CPU seconds per request): the machine's bound on
    the mean latency is clients × CPU per request / cores, whatever the scheduling."""
    before = _cpu_s(pids)
    firsts, totals = asyncio.run(_load(url, clients, requests, stream))
    after = _cpu_s(pids)
    n = len(totals)
    cpu = {name: 1000 * (after[name] - before[name]) / n for name in after}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"n": n, "p50_ms": pct(totals, 50), "p95_ms": pct(totals, 95), "mean_ms": statistics.mean(totals),
            "first_p50_ms": pct(firsts, 50), "first_mean_ms": statistics.mean(firsts), "cpu_ms_per_request": cpu,
            "bound_mean_ms": clients * sum(cpu.values()) / cores, "cores": cores}


def proxy_figures(clients: int, requests: int) -> dict[str, Any]:
    """Latency of the upstream direct and through `mllm-protector serve`, one client and `clients` at once (with
    each process's CPU per request under load, and the bound it puts on the mean latency)."""
    up_port, proxy_port = free_port(), free_port()
    direct, proxied = f"http://{LOOPBACK}:{up_port}/v1/chat/completions", f"http://{LOOPBACK}:{proxy_port}/v1/chat/completions"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "proxy_load.py"), "_upstream", "--port", str(up_port)])]
    out: dict[str, Any] = {"clients": clients, "requests": requests}
    try:
        wait_ready(f"http://{LOOPBACK}:{up_port}/v1/models", 60, procs[0])
        procs.append(subprocess.Popen([*CLI, "serve", "--upstream", f"http://{LOOPBACK}:{up_port}/v1", "--port", str(proxy_port),
                                       "--detoxifier", "refusal"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(f"http://{LOOPBACK}:{proxy_port}/health", 300, procs[1])
        asyncio.run(_load(proxied, 4, 3, False))  # warm-up
        for name, url in (("direct", direct), ("proxy", proxied)):
            pids = {"upstream": procs[0].pid, **({"proxy": procs[1].pid} if name == "proxy" else {})}
            _, one = asyncio.run(_load(url, 1, 30, False))
            many = _loaded(url, clients, requests, False, pids)
            streamed = _loaded(url, clients, requests, True, pids)
            out[name] = {"one_p50_ms": pct(one, 50), "many_p50_ms": many["p50_ms"], "many_p95_ms": many["p95_ms"],
                         "stream_first_p50_ms": streamed["first_p50_ms"], "many": many, "stream": streamed}
    finally:
        stop_processes(procs)
    return out


# --- 4. detoxification -----------------------------------------------------------------------------
def detox_figures(n: int, seed: int) -> dict[str, Any]:
    """Seconds per rewrite of n harmful answers by the default local detoxifier (`lm`)."""
    from mllm_protector.protector import build_detoxifier

    t0 = time.perf_counter()
    detox = build_detoxifier("lm")
    assert detox is not None
    load_s = time.perf_counter() - t0
    harmful = real_answers(n, seed + 2, label=1)
    detox.rewrite(harmful[0]["query"] or "", harmful[0]["response"])  # warm-up
    took = [timed(lambda a=a: detox.rewrite(a["query"] or "", a["response"]), 1)[0] for a in harmful]
    return {"n": len(harmful), "kind": type(detox).__name__, "load_s": load_s, "mean_s": statistics.mean(took),
            "p50_s": pct(took, 50), "p95_s": pct(took, 95)}


# --- 5. cold starts --------------------------------------------------------------------------------
def cold_starts(work: Path, repeat: int) -> dict[str, Any]:
    """Median wall seconds of fresh processes: import, `score` of one line, `protect` of one benign line."""
    line = work / "one.jsonl"
    line.write_text(json.dumps({"query": "What is in the picture?", "response": BENIGN}) + "\n")

    def run(args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(args, check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0

    def median(args: list[str]) -> float:
        return statistics.median(run(args) for _ in range(repeat))

    return {"import_s": median([sys.executable, "-c", "import mllm_protector"]),
            "score_s": median([*CLI, "score", "-i", str(line), "-o", str(work / "s.jsonl"), "--no-resume"]),
            "protect_s": median([*CLI, "protect", "-i", str(line), "-o", str(work / "p.jsonl"), "--no-resume"])}


# --- 6. the machine's ceiling ----------------------------------------------------------------------
def _gemm_session(op: str, rows: int, inner: int, cols: int) -> tuple[Any, dict[str, Any]]:
    """A one-operator ONNX Runtime graph (MatMul fp32 or MatMulInteger int8) on one thread, and its input."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    integer = op == "MatMulInteger"
    x = rng.integers(0, 255, (rows, inner)).astype(np.uint8) if integer else rng.standard_normal((rows, inner)).astype(np.float32)
    w = rng.integers(-127, 127, (inner, cols)).astype(np.int8) if integer else rng.standard_normal((inner, cols)).astype(np.float32)
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8 if integer else TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT32 if integer else TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), {"x": x}


def _cpu_seconds(fn: Any, repeat: int) -> float:
    """CPU seconds this process spends per call of fn() (after one warm-up call): insensitive to other load."""
    fn()
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / repeat


def ceiling_figures(windows: int) -> dict[str, Any]:
    """How close each detector path runs to this CPU's measured peak, on one thread in CPU seconds (so other
    load does not skew it): GEMM peaks (ONNX Runtime MatMul fp32, MatMulInteger int8) on the detector's
    feed-forward shape, against 128-token windows per CPU second of a plain torch fp32 forward and of the
    fp32 and int8 ONNX graphs, counted in FLOPs of the network's matrix products."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from mllm_protector import HarmDetector
    from mllm_protector.config import PRETRAINED_DIR
    from mllm_protector.detector import load_trainable
    from mllm_protector.onnx_backend import GRAPHS

    model, tokenizer, _ = load_trainable(PRETRAINED_DIR / "detector-default")
    plain = model.merge_and_unload().eval()
    cfg, length = plain.config, 128
    hidden, inner, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers

    def gemm_flops(tokens: int) -> int:
        """FLOPs of the matrix products of one window of `tokens` tokens."""
        return layers * (2 * tokens * hidden * (4 * hidden + 2 * inner) + 4 * tokens * tokens * hidden)

    flops = gemm_flops(length)
    short = len(tokenizer(BENIGN)["input_ids"])  # the proxy benchmark's answer
    out: dict[str, Any] = {"window_gflop": flops / 1e9, "proxy_answer_tokens": short, "proxy_answer_gflop": gemm_flops(short) / 1e9}
    for name, op in (("fp32", "MatMul"), ("int8", "MatMulInteger")):
        session, feed = _gemm_session(op, 8 * length, hidden, inner)
        out[f"peak_{name}_gflops"] = 2 * 8 * length * hidden * inner / _cpu_seconds(lambda s=session, f=feed: s.run(None, f), 30) / 1e9
    ids = torch.randint(1000, 20000, (1, length))
    ids[0, 0], ids[0, -1] = 101, 102
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            rate = {"plain torch fp32": 1 / _cpu_seconds(lambda: plain(input_ids=ids, attention_mask=torch.ones_like(ids)), windows)}
    finally:
        torch.set_num_threads(threads)
    HarmDetector.from_pretrained("default", backend="onnx")  # makes the export when it is missing
    export = PRETRAINED_DIR / "detector-default" / "onnx"
    for name, backend in (("onnx fp32", "onnx"), ("onnx int8", "onnx-int8")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(export / GRAPHS[backend]), options, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
        rate[name] = 1 / _cpu_seconds(lambda s=session, f=feed: s.run(None, f), windows)
    out["windows_per_cpu_s"] = rate
    out["fraction_of_peak"] = {name: r * flops / 1e9 / out["peak_int8_gflops" if "int8" in name else "peak_fp32_gflops"]
                               for name, r in rate.items()}
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, in the order of the module docstring; prints each as it is measured."""
    result: dict[str, Any] = {"machine": machine(), "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                                         capture_output=True, text=True).stdout.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, fn in (("cold", lambda: cold_starts(work, args.repeat)),
                         ("detector", lambda: detector_figures(args.n_detector, args.batch, args.seed)),
                         ("cli_score", lambda: cli_score(args.n_score, args.seed, work)),
                         ("proxy", lambda: proxy_figures(args.clients, args.requests)),
                         ("detox", lambda: detox_figures(args.n_detox, args.seed)),
                         *([("ceiling", lambda: ceiling_figures(args.n_ceiling))] if args.n_ceiling else [])):
            t0 = time.perf_counter()
            result[name] = fn()
            result[name]["took_s"] = time.perf_counter() - t0
            print(name, {k: v for k, v in result[name].items() if k != "scores"}, flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    return result


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


#: The goal of each figure (issue #11), in the order of `rows`.
GOALS = ["≥ 3× plain torch", "≥ 3× faster, same scores ± 1e-3", "≤ 20", "≤ 100 / 300", "≤ 150", "p50 ≤ 2, p95 ≤ 4",
         "≤ 5 / ≤ 5 / ≤ 1"]


def rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, in-run reference) rows of one run."""
    d, c, p, x, cold = r["detector"], r["cli_score"], r["proxy"], r["detox"], r["cold"]
    direct, proxy = p["direct"], p["proxy"]
    return [
        ("`HarmDetector.score`, 128-token answers, batch 256: answers/s",
         f"{_f(d['score_per_s'])} ({_f(d['score_per_s'] / d['plain_torch_per_s'], 2)}× plain torch)",
         f"plain torch fp32 forward {_f(d['plain_torch_per_s'])}/s"),
        ("`mllm-protector score` on real answers: wall s",
         _f(c["wall_s"]), f"{c['n']} answers (mean {c['mean_chars']:.0f} chars): {_f(c['n'] / c['wall_s'])} answers/s"),
        ("proxy, one short benign answer, no load: added latency p50 ms",
         _f(proxy["one_p50_ms"] - direct["one_p50_ms"]), f"direct {_f(direct['one_p50_ms'])} ms; detector alone {_f(d['one_short_ms_p50'])} ms"),
        (f"proxy, {p['clients']} concurrent clients, non-streaming: p50 / p95 ms",
         f"{_f(proxy['many_p50_ms'], 0)} / {_f(proxy['many_p95_ms'], 0)}", f"direct {_f(direct['many_p50_ms'], 0)} / {_f(direct['many_p95_ms'], 0)}"
         + (f"; detector alone on {p['clients']} answers {_f(d['twenty_short_ms_p50'], 0)} ms" if "twenty_short_ms_p50" in d else "")),
        (f"streaming, {p['clients']} concurrent clients: time to first content p50 ms",
         _f(proxy["stream_first_p50_ms"], 0), f"direct {_f(direct['stream_first_p50_ms'], 0)}"),
        ("detoxification of one harmful answer (default local detoxifier): mean / p50 / p95 s",
         f"{_f(x['mean_s'], 2)} / {_f(x['p50_s'], 2)} / {_f(x['p95_s'], 2)}",
         f"{x['kind']}, {x['n']} answers; model load {_f(x['load_s'])} s"),
        ("cold start: `score` one line / `protect` one benign line / `import mllm_protector`: s",
         f"{_f(cold['score_s'])} / {_f(cold['protect_s'])} / {_f(cold['import_s'], 2)}", "fresh processes, median"),
    ]


def load_lines(runs: list[Path], data: list[dict[str, Any]]) -> list[str]:
    """Per run with CPU accounting: each process's CPU per request under the closed-loop load and the bound it
    puts on the mean latency (clients × CPU per request / cores), beside the measured mean."""
    lines = ["\nProxy under load: the clients send their next request when the last is answered (a closed loop), so the "
             "mean latency is at least clients × CPU per request / cores (Little's law; the CPU is the bottleneck). "
             "CPU ms per request by process (user + system), the bound from all of them and from the proxy alone (as if "
             "the upstream and the clients ran elsewhere), and the measured mean:\n",
             "| run | phase | proxy | upstream | clients | bound, all processes | bound, proxy alone | measured mean (p50; streaming: p50 of the first content) | share of the bound reached |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, r in zip(runs, data, strict=True):
        proxy = r["proxy"]["proxy"]
        for phase, label, mean, p50 in (("many", "non-streaming", "mean_ms", "p50_ms"), ("stream", "streaming", "mean_ms", "first_p50_ms")):
            if phase not in proxy:
                continue
            m = proxy[phase]
            cpu, clients = m["cpu_ms_per_request"], r["proxy"]["clients"]
            alone = clients * cpu["proxy"] / m["cores"]
            lines.append(f"| {path.stem} | {label} | {_f(cpu['proxy'])} | {_f(cpu['upstream'])} | {_f(cpu['clients'])} | "
                         f"{_f(m['bound_mean_ms'], 0)} | {_f(alone, 0)} | {_f(m[mean], 0)} ({_f(m[p50], 0)}) | "
                         f"{m['bound_mean_ms'] / m[mean]:.0%} |")
    ceiling = next((r["ceiling"] for r in reversed(data) if "proxy_answer_gflop" in r.get("ceiling", {})), None)
    last = next((r["proxy"] for r in reversed(data) if "many" in r["proxy"]["proxy"]), None)
    if ceiling is not None and last is not None:
        clients, cores, gflop = last["clients"], last["proxy"]["many"]["cores"], ceiling["proxy_answer_gflop"]
        at_peak = {p: 1000 * gflop / ceiling[f"peak_{p}_gflops"] for p in ("fp32", "int8")}
        lines.append(f"\nThe detector's work on the proxy's answer ({ceiling['proxy_answer_tokens']} tokens, {gflop:.2f} GFLOP of "
                     f"matrix products) takes {_f(at_peak['fp32'])} CPU ms at the fp32 GEMM peak ({_f(at_peak['int8'])} at the int8 "
                     f"peak). So {clients} clients on {cores} cores cannot average under {_f(clients * at_peak['fp32'] / cores, 0)} ms "
                     f"with fp32 scores ({_f(clients * at_peak['int8'] / cores, 0)} ms with int8), even with a kernel at the peak "
                     "and nothing else on the machine.")
    return lines if len(lines) > 3 else []


def ceiling_lines(c: dict[str, Any]) -> list[str]:
    """The ceiling figures as a table, with the largest speed-up over plain torch fp32 each precision allows."""
    rate, share = c["windows_per_cpu_s"], c["fraction_of_peak"]
    lines = [f"\nCeiling (one thread, CPU seconds, so other load does not skew it): GEMM peak on the detector's "
             f"feed-forward shape {_f(c['peak_fp32_gflops'])} GFLOP/s fp32, {_f(c['peak_int8_gflops'])} GOP/s int8; "
             f"a 128-token window is {c['window_gflop']:.2f} GFLOP of matrix products.\n",
             "| path | windows per CPU second | × plain torch | fraction of the peak of its precision |", "|---|---|---|---|"]
    for name, value in rate.items():
        lines.append(f"| {name} | {_f(value)} | {_f(value / rate['plain torch fp32'], 2)} | {share[name]:.0%} |")
    torch_gflops = rate["plain torch fp32"] * c["window_gflop"]
    lines.append(f"\nAt the fp32 peak a path would be {_f(c['peak_fp32_gflops'] / torch_gflops, 2)}× plain torch; at the int8 peak "
                 f"{_f(c['peak_int8_gflops'] / torch_gflops, 2)}×. A path whose scores stay within 1e-3 of fp32 (the `score` row) "
                 "computes in fp32 and cannot pass the first bound on this CPU; int8 moves single scores by up to ~0.2.")
    return lines


def render(runs: list[Path], command: str) -> str:
    """A markdown table: one value column per run (e.g. before, after), with each run's in-run reference."""
    data = [json.loads(p.read_text()) for p in runs]
    table = [rows(r) for r in data]
    head = "| figure | goal | " + " | ".join(f"{p.stem} ({r['git']}) | reference" for p, r in zip(runs, data, strict=True)) + " |"
    lines = [f"# Performance (issue #11)\n\nCommand: `{command}` (each run: `python benchmarks/perf.py --json <file>`).\n",
             head, "|---|---|" + "---|---|" * len(runs)]
    for i, (figure, _, _) in enumerate(table[0]):
        lines.append(f"| {figure} | {GOALS[i]} | " + " | ".join(f"{t[i][1]} | {t[i][2]}" for t in table) + " |")
    first = data[0]["cli_score"]["scores"]
    for p, r in list(zip(runs, data, strict=True))[1:]:
        if len(r["cli_score"]["scores"]) == len(first):
            diff = max(abs(a - b) for a, b in zip(first, r["cli_score"]["scores"], strict=True))
            lines.append(f"\nLargest |score difference| of {p.stem} from {runs[0].stem} on the `score` answers: {diff:.2e}.")
    lines += load_lines(runs, data)
    ceiling = next((r["ceiling"] for r in reversed(data) if "ceiling" in r), None)
    if ceiling is not None:
        lines += ceiling_lines(ceiling)
    lines.append("\nMachines:")
    for p, r in zip(runs, data, strict=True):
        m = r["machine"]
        lines.append(f"- {p.stem}: detector backend {m.get('backend', 'auto')}; {m['cpu']}, {m['cores']} cores visible, "
                     f"torch {m['torch']} ({m['torch_threads']} threads), "
                     f"onnxruntime {m['onnxruntime']}, llama-cpp-python {m['llama_cpp']}, GPU {m['gpu']}; load average "
                     f"{m['loadavg_start']:.1f} → {m['loadavg_end']:.1f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Measure and write the figures here.")
    parser.add_argument("--render", type=Path, nargs="+", help="Render measured JSON files (before, after) as markdown.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "perf.md")
    parser.add_argument("--n-detector", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n-score", type=int, default=600)
    parser.add_argument("--n-detox", type=int, default=12)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-ceiling", type=int, default=40, help="windows per path for the single-thread ceiling figures (0: skip them, e.g. on a checkout without the ONNX backend)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", help="MLLM_PROTECTOR_BACKEND for every figure, e.g. onnx-int8 (default: auto)")
    args = parser.parse_args()
    if args.backend:
        os.environ["MLLM_PROTECTOR_BACKEND"] = ENV["MLLM_PROTECTOR_BACKEND"] = args.backend
    if args.render:
        command = "python benchmarks/perf.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
        args.out.write_text(render(args.render, command))
        print(args.out.read_text())
        return 0
    if not args.json:
        parser.error("give --json FILE to measure, or --render FILES to render")
    result = measure(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
