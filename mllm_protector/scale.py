"""`score` and `protect` on Ray Data, for inputs too large for one process (e.g. filtering a training corpus).

JSONL or Parquet files (or folders of them) are read in parallel, an actor pool holds the models (each actor
builds its Protector once, through `GuardSpec`), and every record is written back with the same fields as the
single-process CLI writes (JSONL lines are byte-for-byte the same shape) into a folder of shards, in input order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy, BlockBasedFileDatasink, DataContext, SaveMode
from ray.data.block import BlockAccessor
from ray.exceptions import RayTaskError

from .batch import JOBS, GuardSpec, Record
from .errors import InputError, ProtectorError
from .jsonl import check_record, parse_record

#: Arrow types of the fields the jobs add, so every Parquet shard has the same schema.
ADDED_TYPES: dict[str, pa.DataType] = {"score": pa.float64(), "harmful": pa.bool_(), "category": pa.string(),
                                       "error": pa.string(), "text": pa.string(), "action": pa.string(), "rounds": pa.int64()}
#: Errors the user can fix, reported as one line: our own (a bad record, a wrong model name) and unreadable input.
USER_ERRORS = (ProtectorError, UnicodeDecodeError, pa.ArrowInvalid, OSError)
#: Settings the actors need from the driver's environment (model cache, offline mode, data folder).
ENV_PREFIXES = ("MLLM_PROTECTOR_", "HF_", "TRANSFORMERS_")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: `address` is `local`, `auto` or `ray://host:port`; resources are per actor."""

    address: str = "local"
    workers: int | None = None  # None: as many actors as the cluster's CPUs (or GPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 32


def local_path(path: str, address: str) -> Path | None:
    """`path` as a local file or folder when this machine sees what the actors see: not a URI (`s3://...`) and
    not through Ray Client (`ray://`, whose paths are the cluster's)."""
    return None if "://" in path or address.startswith("ray://") else Path(path)


def is_parquet(path: str, local: Path | None) -> bool:
    """Parquet when the name ends in `.parquet` or the local folder holds `.parquet` files; JSONL otherwise."""
    return path.rstrip("/").endswith(".parquet") or (local is not None and local.is_dir() and any(local.rglob("*.parquet")))


def _excerpt(text: str) -> str:
    """The start of a record, to name it in an error (sharded reads have no global line number)."""
    return text if len(text) <= 80 else text[:77] + "..."


class JsonLinesDatasink(BlockBasedFileDatasink):
    """Writes the `line` column (JSON texts) as JSONL shards."""

    def __init__(self, path: str, mode: SaveMode):
        super().__init__(path, file_format="jsonl", mode=mode)

    def write_block_to_file(self, block: BlockAccessor, file: pa.NativeFile) -> None:
        lines = block.to_arrow()["line"].to_pylist()
        if lines:
            file.write(("\n".join(lines) + "\n").encode("utf-8"))


class Worker:
    """A Ray actor: builds the Protector once, then turns each batch of input rows into output rows."""

    def __init__(self, job: str, spec: GuardSpec, source: str, parquet_in: bool, parquet_out: bool, schema: pa.Schema | None):
        self.job = JOBS[job]
        self.source = source
        self.parquet_in = parquet_in
        self.parquet_out = parquet_out
        self.types = {**({f.name: f.type for f in schema} if schema is not None else {}),
                      **{name: ADDED_TYPES[name] for name in self.job.adds}}
        try:
            self.guard = spec.build()
            self.setup_error: ProtectorError | None = None
        except ProtectorError as exc:  # Ray reports a failed actor start only as a dead actor: report it with a batch
            self.setup_error = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.setup_error is not None:
            raise self.setup_error
        records = self._records(batch)
        return self._table(self.job.process(self.guard, records) if records else [])

    def _records(self, batch: pa.Table) -> list[Record]:
        """Checked records: JSONL lines parsed as the single-process CLI does, Parquet rows checked the same way."""
        records = []
        if self.parquet_in:
            for row in batch.to_pylist():
                where = f"{self.source}, row {_excerpt(json.dumps(row, ensure_ascii=False, default=str))}"
                records.append(check_record(row, self.job.required, where))
                self.job.check(row, where)
            return records
        for text, path in zip(batch["text"].to_pylist(), batch["path"].to_pylist(), strict=True):
            if text.strip():
                where = f"{path}, line {_excerpt(text.strip())}"
                records.append(parse_record(text, self.job.required, where))
                self.job.check(records[-1], where)
        return records

    def _table(self, records: list[Record]) -> pa.Table:
        """JSONL: one `line` column of JSON texts; Parquet: one column per field, the added ones always present."""
        if not self.parquet_out:
            return pa.table({"line": pa.array([json.dumps(r, ensure_ascii=False, default=str) for r in records], pa.string())})
        names = list(dict.fromkeys([*(k for r in records for k in r), *self.job.adds]))
        return pa.table({n: pa.array([r.get(n) for r in records], self.types.get(n)) for n in names})


def _not_ours(record: logging.LogRecord) -> bool:
    """False for Ray Data's console report of a user error (the CLI prints it in one line; Ray Data's log file
    keeps the full report). Ray Data logs it while handling the exception, so `sys.exc_info` names it."""
    return not isinstance(record.exc_info[1] if record.exc_info else sys.exc_info()[1], USER_ERRORS)


def _quiet_console() -> None:
    """Keep tracebacks of user errors (a bad record, a wrong model name) off Ray Data's console handler."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.addFilter(_not_ours)  # idempotent: a filter is added once


def _connect(address: str) -> bool:
    """Join the Ray runtime (an already initialised one is used as is); True when this call started it."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local", include_dashboard=False)
    else:  # an existing cluster: its own settings apply
        ray.init(address=address)
    return True


def _actors(options: RayOptions) -> int:
    """The actor pool size: the given one, else as many actors as the cluster's CPUs (or GPUs) hold."""
    if options.workers is not None:
        return options.workers
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // options.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))


def _check_paths(source: str, target: str, overwrite: bool, address: str) -> None:
    """Clear errors before any work: stdin/stdout, a missing local input, a local output that is not empty."""
    if "-" in (source, target):
        raise InputError("--ray reads and writes files or folders, not stdin/stdout (`-`)")
    src, dst = local_path(source, address), local_path(target, address)
    if src is not None and not src.exists():
        raise InputError(f"input {source} does not exist")
    if dst is not None and dst.exists() and not overwrite and (dst.is_file() or any(dst.iterdir())):
        raise InputError(f"output {target} already exists (a Ray run writes a new folder of shards and cannot resume): "
                         "remove it or pass --no-resume to replace it")


def run(job: str, spec: GuardSpec, source: str, target: str, options: RayOptions, overwrite: bool = False) -> None:
    """Run `job` (`score` or `protect`) over `source` into the folder `target` on Ray Data."""
    _check_paths(source, target, overwrite, options.address)
    _quiet_console()
    started = _connect(options.address)
    try:
        context = DataContext.get_current()
        context.raise_original_map_exception = True  # our InputError reaches the driver, not a wrapped UDF error
        context.execution_options.preserve_order = True  # shards follow the input order
        context.use_datasource_v2 = False  # its file listing needs a whole CPU, which a full actor pool never frees
        parquet_in, parquet_out = is_parquet(source, local_path(source, options.address)), target.rstrip("/").endswith(".parquet")
        # reading and writing are light: with 0 CPUs they never wait behind actors that hold every CPU
        ds = ray.data.read_parquet(source, num_cpus=0) if parquet_in else ray.data.read_text(source, include_paths=True, num_cpus=0)
        found = ds.schema() if parquet_in else None
        schema = pa.schema(zip(found.names, found.types, strict=True)) if found is not None else None
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
        ds = ds.map_batches(Worker, fn_constructor_args=(job, spec, source, parquet_in, parquet_out, schema),
                            batch_size=options.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=_actors(options)),
                            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker, runtime_env={"env_vars": env})
        # an existing local folder is empty here (checked above); elsewhere Ray refuses to write into an existing one
        dst = local_path(target, options.address)
        mode = SaveMode.OVERWRITE if overwrite or (dst is not None and dst.is_dir()) else SaveMode.CREATE
        if parquet_out:
            ds.write_parquet(target, mode=mode, ray_remote_args={"num_cpus": 0})
        else:
            ds.write_datasink(JsonLinesDatasink(target, mode), ray_remote_args={"num_cpus": 0})
    except Exception as exc:  # Ray hands a task's exception over as RayTaskError(<its class>), the original in `cause`
        message = _user_message(exc.cause if isinstance(exc, RayTaskError) else exc, source)
        if message is None:
            raise  # not the user's to fix: the full report
        raise InputError(message) from None
    finally:
        if started:
            ray.shutdown()


def score_labelled(spec: GuardSpec, source: str, target: Path, options: RayOptions, default_source: str) -> tuple[list[int], list[float], list[str]]:
    """Score labelled answers (`response`, `label`[, `query`, `source`]) on Ray into the JSONL folder `target`
    (which this machine must be able to read: local disk or a shared mount), then read back each answer's
    label, score and source (rows without one get `default_source`) for the metrics."""
    from .data.readers import parse_label

    run("score", spec, source, str(target), options, overwrite=True)
    labels, scores, sources = [], [], []
    for shard in sorted(target.glob("*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            where = f"{source}, answer {_excerpt(str(row.get('response', '')))!r}"
            if "label" not in row:
                raise InputError(f"{where}: no `label` field (0/1, true/false, harmful/harmless or unsafe/safe)")
            labels.append(parse_label(row["label"], where))
            scores.append(float(row["score"]))
            sources.append(str(row.get("source") or default_source))
    return labels, scores, sources


def _user_message(exc: BaseException, source: str) -> str | None:
    """One line for what the user can fix (a bad record or model name, unreadable input), else None. Ray appends
    retry advice to an exception's first argument, so only its first line is kept."""
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read {source}: not UTF-8 text ({exc.reason})"
    if isinstance(exc, USER_ERRORS):
        first = str(exc.args[0] if isinstance(exc, ProtectorError) else exc).split("\n")[0]
        return first if isinstance(exc, ProtectorError) else f"cannot read or write the data of {source}: {first}"
    return None
