"""Optional JSON-lines audit log: one line per guarded answer; no answer text unless asked for."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

TEXT_FIELDS = ("query", "original", "text")


class AuditLog:
    """Appends one JSON object per line; `include_text=False` drops query/original/text fields."""

    def __init__(self, path: str | Path, include_text: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.include_text = include_text
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = {"ts": round(time.time(), 3)}
        line.update({k: v for k, v in record.items() if self.include_text or k not in TEXT_FIELDS})
        data = json.dumps(line, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
