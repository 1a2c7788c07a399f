"""What a run reports: the metric log files and the progress display."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, TextIO

__all__ = ["MetricLogger", "Progress", "LOG_CSV", "LOG_JSONL"]

LOG_CSV = "train_log.csv"
LOG_JSONL = "train_log.jsonl"


def _replace_file(path: str, text: str) -> None:
    tmp_path = f"{path}.tmp-{os.getpid()}"
    with open(tmp_path, "w", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)


class MetricLogger:
    """Rows of (step, split, metrics) to ``train_log.csv`` and
    ``train_log.jsonl``, appended: a resumed run continues the files.

    On opening, rows of steps after ``keep_until`` (the step the run starts
    from) are dropped, as is a line a killed writer left half-written: the
    steps a run repeats after resuming from its checkpoint are logged once.
    """

    COLUMNS = ("step", "split", "loss", "val_loss", "lr", "grad_norm",
               "samples_per_s", "wall_time")

    def __init__(self, out_dir: str, enabled: bool = True,
                 keep_until: Optional[int] = None):
        self.enabled = enabled
        if not enabled:
            return
        csv_path = os.path.join(out_dir, LOG_CSV)
        json_path = os.path.join(out_dir, LOG_JSONL)
        if keep_until is not None:
            self._truncate_csv(csv_path, keep_until)
            self._truncate_jsonl(json_path, keep_until)
        new_file = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
        self.csv_file = open(csv_path, "a", newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.COLUMNS,
                                  extrasaction="ignore")
        if new_file:
            self.csv.writeheader()
        self.json_file = open(json_path, "a")

    @classmethod
    def _truncate_csv(cls, path: str, keep_until: int) -> None:
        if not os.path.exists(path):
            return
        with open(path, newline="") as handle:
            text = handle.read()
        lines = text.splitlines(keepends=True)
        if not lines:
            return
        kept = [lines[0]]  # the header
        for line in lines[1:]:
            if not line.endswith("\n"):
                break  # half-written by a killed process
            row = next(csv.reader([line]), [])
            try:
                step = int(row[0])
            except (IndexError, ValueError):
                continue
            if len(row) == len(cls.COLUMNS) and step <= keep_until:
                kept.append(line)
        if kept != lines:
            _replace_file(path, "".join(kept))

    @staticmethod
    def _truncate_jsonl(path: str, keep_until: int) -> None:
        if not os.path.exists(path):
            return
        with open(path) as handle:
            lines = handle.read().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if line.endswith("\n") and step <= keep_until:
                kept.append(line)
        if kept != lines:
            _replace_file(path, "".join(kept))

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, "wall_time": time.time(), **metrics}
        self.csv.writerow(row)
        self.csv_file.flush()
        self.json_file.write(json.dumps(row) + "\n")
        self.json_file.flush()

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            self.json_file.close()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


class Progress:
    """The training progress on ``stream`` (default ``sys.stderr``): a
    redrawn tqdm bar on a terminal; elsewhere (a file, a pipe, a notebook
    capture, a batch job's log) one plain line every ``every`` steps, since
    carriage-return redraws would fill a log file with thousands of
    updates."""

    def __init__(self, total: int, initial: int, every: int,
                 stream: Optional[TextIO] = None, desc: str = "train"):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.step, self.every, self.desc = total, initial, every, desc
        self.postfix: Dict[str, str] = {}
        self.start_step, self.start_time = initial, time.perf_counter()
        self.bar = None
        if _is_terminal(self.stream):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc,
                            dynamic_ncols=True, file=self.stream)

    def update(self, step: int, **postfix: str) -> None:
        """Record that ``step`` is done (``postfix``: values to show)."""
        advanced, self.step = step - self.step, step
        self.postfix.update(postfix)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)
            self.bar.update(advanced)
            return
        if step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.start_time
            rate = (step - self.start_step) / max(elapsed, 1e-9)
            parts: List[str] = [f"{self.desc} step {step}/{self.total}",
                                f"{rate:.1f} steps/s"]
            parts += [f"{k} {v}" for k, v in self.postfix.items()]
            self.stream.write(", ".join(parts) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
