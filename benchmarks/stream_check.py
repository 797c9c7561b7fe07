"""Cost and effect of the stream-window check, measured through the real proxy on loopback.

1. Leak suite: the handwritten harmful answers of tests/stream_fixtures.py behind benign lead-ins of
   0–2,000 characters, streamed word by word; counts harmful sentences released and characters released.
2. Time to first token for benign answers, directly from the upstream and through the proxy.
3. Detector time for one long answer: whole (one check) vs streamed (one check per window), and what
   re-scoring the whole prefix (its last 4,000 characters, the old relay) cost for the same windows.

    python benchmarks/stream_check.py                     # writes docs/results/stream_check.md
    python benchmarks/stream_check.py --long-chars 20000 --output /tmp/stream.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stream_calibration import stream_windows  # noqa: E402
from mllm_protector import HarmDetector, Protector, RefusalDetoxifier  # noqa: E402
from mllm_protector.server.app import create_app  # noqa: E402
from mllm_protector.server.config import StreamConfig, load_config  # noqa: E402
from tests.servers import ServerThread, scripted_upstream  # noqa: E402
from tests.stream_fixtures import BENIGN_ANSWERS, HARMFUL_ANSWERS, lead_in  # noqa: E402

LEADS = (0, 100, 450, 1000, 2000)
MESSAGES = [{"role": "user", "content": "Tell me about it."}]


def first_token_s(base: str, model: str) -> tuple[float, str]:
    """Seconds until the first non-empty content delta, and the whole streamed content."""
    import json

    t0 = time.perf_counter()
    first, text = None, []
    with httpx.stream("POST", base + "/chat/completions", json={"model": model, "messages": MESSAGES, "stream": True},
                      timeout=120) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    first = first if first is not None else time.perf_counter() - t0
                    text.append(content)
    return first if first is not None else float("nan"), "".join(text)


def long_answer_cost(protector: Protector, chars: int) -> dict[str, Any]:
    """Detector work for a `chars`-long benign answer, whole vs streamed with the new check vs the old
    re-scoring of the last 4,000 characters per window: model rows (token windows of the detector, the
    load-independent measure) and wall seconds."""
    text = lead_in(chars)
    windows = stream_windows(text, StreamConfig())
    approved, new_texts, old_texts = "", list[str](), list[str]()
    for window in windows:
        new_texts += protector.window_texts(approved, window)
        old_texts.append((approved + window)[-4000:])
        approved += window
    cost: dict[str, Any] = {"windows": len(windows)}
    for name, calls in (("whole", [[text]]), ("new", [new_texts[k:k + 2] for k in range(0, len(new_texts), 2)]),
                        ("old", [[t] for t in old_texts])):
        cost[name + "_rows"] = sum(len(protector.detector.encode(texts)["input_ids"]) for texts in calls)
        t0 = time.perf_counter()
        for texts in calls:  # one detector call per window, as the relay makes them
            protector.score([None] * len(texts), texts)
        cost[name + "_s"] = time.perf_counter() - t0
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-chars", type=int, default=80_000)
    parser.add_argument("--chunk-delay", type=float, default=0.01, help="seconds between upstream words (~generation speed)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads; on a small machine shared with other jobs, more threads make small "
                             "detector calls slower (they wait for each other)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "results" / "stream_check.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    protector = Protector(HarmDetector.from_pretrained("default"), RefusalDetoxifier())
    harmful = {f"harm{i}-lead{n}": (markers, lead_in(n) + answer)
               for i, (_, answer, markers) in enumerate(HARMFUL_ANSWERS) for n in LEADS}
    benign = {f"benign{i}-lead{n}": lead_in(n) + answer for i, answer in enumerate(BENIGN_ANSWERS) for n in (0, 1000)}
    texts = {m: t for m, (_, t) in harmful.items()} | benign
    with ServerThread(scripted_upstream(texts, chunk_delay=args.chunk_delay)) as upstream, \
            ServerThread(create_app(load_config(None, {"upstream": {"url": upstream.url + "/v1"}}, env={}), protector)) as proxy:
        leaks, released_chars, flagged = 0, [], 0
        for model, (markers, _) in harmful.items():
            _, text = first_token_s(proxy.url + "/v1", model)
            leaks += any(m in text.lower() for m in markers)
            if text.endswith(protector.refusal):
                flagged += 1
                released_chars.append(max(0, len(text) - len(protector.refusal) - 2))
        direct, guarded, changed = [], [], 0
        for model, answer in benign.items():
            direct.append(first_token_s(upstream.url + "/v1", model)[0])
            ttft, text = first_token_s(proxy.url + "/v1", model)
            guarded.append(ttft)
            changed += text != answer
    cost = long_answer_cost(protector, args.long_chars)
    added = [g - d for g, d in zip(guarded, direct, strict=True)]
    lines = [
        "# Stream-window check: leaks, time to first token, detector cost",
        "",
        f"`python benchmarks/stream_check.py --long-chars {args.long_chars} --chunk-delay {args.chunk_delay} "
        f"--torch-threads {args.torch_threads}` on "
        f"{platform.machine()} ({platform.processor() or 'cpu'}), shipped detector, default stream config "
        f"(window threshold {protector.window_threshold}, context threshold {protector.context_threshold}, "
        f"context {protector.settings.context_chars} characters). Upstream: scripted, one word per chunk every "
        f"{args.chunk_delay * 1000:.0f} ms.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| harmful streams (4 answers × lead-ins {LEADS} chars) | {len(harmful)} |",
        f"| streams where a harmful sentence reached the client | **{leaks}** |",
        f"| streams flagged and ended with the replacement | {flagged} |",
        f"| benign characters released before the flag (median / max) | {statistics.median(released_chars or [0]):.0f} / {max(released_chars or [0])} |",
        f"| benign streams (5 answers × lead-ins 0, 1000) changed by the proxy | {changed} of {len(benign)} |",
        f"| time to first token, direct (median / max) | {statistics.median(direct) * 1000:.0f} / {max(direct) * 1000:.0f} ms |",
        f"| time to first token, through the proxy (median / max) | {statistics.median(guarded) * 1000:.0f} / {max(guarded) * 1000:.0f} ms |",
        f"| **added time to first token** (median / max) | **{statistics.median(added) * 1000:.0f} / {max(added) * 1000:.0f} ms** |",
    ]
    lines += ["", f"Detector work for one {args.long_chars:,}-character benign answer ({cost['windows']} stream windows; "
              "rows = token windows the model runs on, independent of machine load; seconds are wall time on a "
              "2-core machine shared with other jobs, one detector call per stream window):", "",
              "| check | model rows | seconds |", "|---|---|---|",
              f"| whole answer, one call | {cost['whole_rows']} | {cost['whole_s']:.1f} |",
              f"| streamed, new check (window alone + window after {protector.settings.context_chars} characters) "
              f"| {cost['new_rows']} | {cost['new_s']:.1f} |",
              f"| streamed, old check (last 4,000 characters re-scored per window) | {cost['old_rows']} | {cost['old_s']:.1f} |"]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
