"""Detector inference on ONNX Runtime: the cached export's location and validity, sessions, tokenizer.

Nothing here imports transformers, nor torch (except to ask a CUDA build of torch whether a GPU is
there), so a detector scored through ONNX Runtime starts fast; `onnx_export.py` (torch) writes the export once. An export is a folder beside the detector (`onnx/`),
or under the package cache when the detector folder is read-only, keyed by a fingerprint of the
detector's weights and graph settings: any change to them makes a stale export that is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .config import cache_dir
from .errors import ProtectorError

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "onnx", "onnx-int8")
#: Graph file of each ONNX backend's harm network; the category network stays fp32 (exact categories).
GRAPHS = {"onnx": "classifier.onnx", "onnx-int8": "classifier.int8.onnx"}
CATEGORY_GRAPH = "category.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_NAME = "export.json"
EXPORT_DIR = "onnx"
#: Bump when the export recipe changes (graphs, fusion, quantisation): old exports and verifications go stale.
EXPORT_FORMAT = 3
#: Files of a detector folder (besides the config) that define its networks.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: Larger files are identified by their size and three 1 MiB slices instead of a full hash (load time).
_HASH_LIMIT = 16 * 2**20


def _file_digest(path: Path) -> bytes:
    """A content digest of a file that is the same on every machine (no paths or times), quick for large files."""
    size = path.stat().st_size
    if size <= _HASH_LIMIT:
        return hashlib.sha256(path.read_bytes()).digest()
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in (0, size // 2, size - 2**20):
            handle.seek(offset)
            digest.update(handle.read(2**20))
    return digest.digest()


def fingerprint(folder: Path, graph: dict[str, Any], backbone_dir: Path | None) -> str:
    """Hash of what an export is built from: the detector's weight files, the settings that shape its
    graphs (`graph`), the backbone's files and `EXPORT_FORMAT`; the same for a copy or on another machine."""
    digest = hashlib.sha256(json.dumps({"format": EXPORT_FORMAT, "graph": graph}, sort_keys=True).encode())
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    files += sorted(p for p in backbone_dir.iterdir() if p.is_file()) if backbone_dir is not None else []
    for path in files:  # by name within each folder: the same wherever the folders are
        digest.update(path.name.encode() + _file_digest(path))
    return digest.hexdigest()


def _gpu_wanted(device: str | None) -> bool:
    """Whether torch should run this detector on a GPU: a non-CPU device was asked for, or none was and torch
    sees CUDA (a CPU-only torch build is recognised from its version, without importing torch)."""
    if device is not None:
        return device != "cpu"
    try:
        if "+cpu" in importlib.metadata.version("torch"):
            return False
    except importlib.metadata.PackageNotFoundError:
        return False
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str, record: dict[str, Any], key: Callable[[], str], device: str | None) -> Backend:
    """The backend to load: `requested` unless "auto"; auto is torch on a GPU or without onnxruntime, else the
    backend `record` names for the export fingerprint `key()` (measured within tolerance), else "onnx"."""
    if requested not in BACKENDS:
        raise ProtectorError(f"unknown detector backend {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    if importlib.util.find_spec("onnxruntime") is None or _gpu_wanted(device):
        return "torch"
    recorded = record.get("backend")
    return recorded if recorded in BACKENDS and recorded != "auto" and record.get("fingerprint") == key() else "onnx"


def _candidates(folder: Path, key: str) -> list[Path]:
    """Where an export of `folder` may live: beside it, else in the package cache (read-only folders)."""
    return [folder / EXPORT_DIR, cache_dir() / "onnx" / key[:32]]


def find_export(folder: Path, key: str) -> Path | None:
    """A complete export of `folder` with fingerprint `key`, or None (missing, stale or incomplete)."""
    for candidate in _candidates(folder, key):
        try:
            meta = json.loads((candidate / META_NAME).read_text())
        except (OSError, ValueError):
            continue
        files = meta.get("files", {})
        if meta.get("fingerprint") == key and files and all(
            (candidate / name).is_file() and (candidate / name).stat().st_size == size for name, size in files.items()
        ):
            return candidate
    return None


def _writable(folder: Path) -> bool:
    """Whether new files can be created in `folder`."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def export_target(folder: Path, key: str) -> Path:
    """Where a new export of `folder` goes: beside it when the folder is writable, else the package cache."""
    for candidate in _candidates(folder, key):
        candidate.parent.mkdir(parents=True, exist_ok=True)
        if _writable(candidate.parent):
            return candidate
    raise ProtectorError(f"cannot write an ONNX export: neither {folder} nor the cache dir is writable (set MLLM_PROTECTOR_CACHE)")


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A new folder beside `target` to write an export into (readable by all, like the model); removed
    afterwards unless `publish` moved it into place."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, target: Path, meta: dict[str, Any]) -> None:
    """Record the staged files in `export.json` and move the folder into place in one rename, so a
    reader never sees half an export; an older export there is removed first, a concurrent one kept."""
    meta["files"] = {p.name: p.stat().st_size for p in staging.iterdir()}
    (staging / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    if target.exists():
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        try:
            target.rename(old)
        except OSError:  # another process moved it first
            pass
        else:
            shutil.rmtree(old, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:  # another process published the same export meanwhile
        shutil.rmtree(staging, ignore_errors=True)


def physical_cores() -> int:
    """Physical cores this process may run on: ONNX Runtime's intra-op threads (hyper-threads do not help)."""
    import psutil

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))


def pad_windows(windows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded `input_ids` and `attention_mask` (int64) for a batch of token windows."""
    width = max(len(w) for w in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = window
        mask[row, : len(window)] = 1
    return ids, mask


class OnnxNetwork:
    """An exported detector network on ONNX Runtime: harm logits and, when it has a category head, each
    window's category index (same contract as the torch network). A `lazy` one opens its graph on first use.

    Every window runs alone (no padding): its score never depends on the windows it is scored with, which
    matters for int8, whose activation scales are set per run. Several windows run side by side, one
    single-threaded run per physical core (more throughput than padded batches on a multi-threaded session:
    benchmarks/detector_backends.py); a lone window runs on all cores, for latency.
    """

    def __init__(self, path: Path, pad_id: int, lazy: bool = False):
        self.path = path
        self.pad_id = pad_id
        self.workers = physical_cores()
        self._lock = threading.Lock()
        self._sessions: dict[int, Any] = {}  # intra-op threads → session
        self._pool: ThreadPoolExecutor | None = None
        if not lazy:
            self._session(self.workers)

    def _session(self, threads: int) -> Any:
        """The session whose operators use `threads` threads, opened on first use."""
        with self._lock:
            if threads not in self._sessions:
                self._sessions[threads] = self._open(threads)
            return self._sessions[threads]

    def _open(self, threads: int) -> Any:
        """An inference session whose operators run one after another, each on `threads` threads."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise ProtectorError(f"cannot load the ONNX graph {self.path} (delete its folder to re-export): {exc}") from exc

    def _run(self, session: Any, window: list[int]) -> dict[str, np.ndarray]:
        """Outputs of one window, by name."""
        ids, mask = pad_windows([window], self.pad_id)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {"input_ids": ids, "attention_mask": mask}), strict=True))

    def __call__(self, windows: list[list[int]]) -> tuple[list[float], list[int] | None]:
        if not windows:
            return [], None
        if len(windows) == 1 or self.workers == 1:
            wide = self._session(self.workers)
            outputs = [self._run(wide, w) for w in windows]
        else:
            narrow = self._session(1)
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-detector")
            outputs = list(self._pool.map(lambda w: self._run(narrow, w), windows))
        logits = [float(o["logits"][0, 0]) for o in outputs]
        if "category_logits" not in outputs[0]:
            return logits, None
        return logits, [int(o["category_logits"][0].argmax()) for o in outputs]


class OnnxTokenizer:
    """The tokenizer a transformers fast tokenizer runs inside, saved with the export and used through the
    `tokenizers` library: the same ids without importing transformers (and torch)."""

    is_fast = True  # offsets are available, as from a transformers fast tokenizer

    def __init__(self, path: Path, pad_token_id: int):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(path))
        self.backend.no_truncation()  # windows are cut by the detector, never by the tokenizer
        self.backend.no_padding()
        self.pad_token_id = pad_token_id

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True,
                 return_offsets_mapping: bool = False) -> dict[str, list[Any]]:
        """`input_ids` (and `offset_mapping`) of one text, as `PreTrainedTokenizerFast.__call__` returns them."""
        encoding = self.backend.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": encoding.ids, **({"offset_mapping": encoding.offsets} if return_offsets_mapping else {})}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


def load_export(folder: Path, backend: Backend) -> tuple[OnnxNetwork, OnnxNetwork | None, OnnxTokenizer]:
    """Harm network of `backend`, the category network (if exported) and the tokenizer of an export."""
    if backend not in GRAPHS:
        raise ProtectorError(f"no ONNX graph for backend {backend!r}: choose one of {', '.join(GRAPHS)}")
    meta = json.loads((folder / META_NAME).read_text())
    pad_id = int(meta["pad_token_id"])
    # The category network runs only on flagged answers: opened when first needed, so scoring starts sooner.
    category = OnnxNetwork(folder / CATEGORY_GRAPH, pad_id, lazy=True) if (folder / CATEGORY_GRAPH).is_file() else None
    return OnnxNetwork(folder / GRAPHS[backend], pad_id), category, OnnxTokenizer(folder / TOKENIZER_FILE, pad_id)
