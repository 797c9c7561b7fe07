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

import httpx

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


def long_answer_cost(protector: Protector, chars: int) -> dict[str, float]:
    """Detector seconds for a `chars`-long benign answer: whole, streamed (new check), and the old re-scoring."""
    text = lead_in(chars)
    windows = stream_windows(text, StreamConfig())
    t0 = time.perf_counter()
    protector.score([None], [text])
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    approved = ""
    for window in windows:
        protector.check_window(None, approved, window)
        approved += window
    streamed = time.perf_counter() - t0
    t0 = time.perf_counter()
    approved = ""
    for window in windows:
        protector.score([None], [(approved + window)[-4000:]])
        approved += window
    old = time.perf_counter() - t0
    return {"windows": len(windows), "whole": whole, "streamed": streamed, "old": old}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-chars", type=int, default=80_000)
    parser.add_argument("--chunk-delay", type=float, default=0.01, help="seconds between upstream words (~generation speed)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "results" / "stream_check.md"))
    args = parser.parse_args()

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
        f"`python benchmarks/stream_check.py --long-chars {args.long_chars} --chunk-delay {args.chunk_delay}` on "
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
        f"| {args.long_chars:,}-character answer: detector time, whole answer | {cost['whole']:.1f} s |",
        f"| same answer streamed: {cost['windows']} windows, new check (window alone + {protector.settings.context_chars}-char context) | {cost['streamed']:.1f} s |",
        f"| same windows, old check (last 4,000 characters re-scored per window) | {cost['old']:.1f} s |",
    ]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
