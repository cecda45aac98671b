"""Live progress of a grid: one bar for the jobs and one line per running job with its epochs.

Jobs in worker processes report each epoch through a queue that the driver drains in a
thread, so a long job shows its epoch, training loss and validation metric as it goes
instead of a jobs bar that sits at 0/N.
"""
from __future__ import annotations

import queue as queue_lib
import threading


def job_label(spec: dict) -> str:
    return f"{spec['model']}/{spec['dataset']}/s{spec['seed']}"


def describe(point: dict) -> str:
    """``loss 12.3456 valid 0.0712 best 0.0731`` for an epoch's curve point."""
    text = f"loss {point['train_loss']:.4f}"
    valid = next((v for k, v in point.items() if k.startswith("valid_")), None)
    if valid is not None:
        text += f" valid {valid:.4f}"
    if point.get("best") is not None:
        text += f" best {point['best']:.4f}"
    return text


class ProgressBoard:
    """tqdm bars: ``jobs`` (finished / pending) and one epoch bar per running job."""

    def __init__(self, total_jobs: int, enabled: bool = True):
        self.enabled = enabled
        self._bars: dict[str, object] = {}
        self._lock = threading.Lock()
        self.jobs = None
        if enabled:
            from tqdm import tqdm
            self._tqdm = tqdm
            self.jobs = tqdm(total=total_jobs, desc="jobs", unit="job", dynamic_ncols=True)

    def epoch(self, job_id: str, label: str, point: dict) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bars.get(job_id)
            if bar is None:
                bar = self._bars[job_id] = self._tqdm(total=point.get("epochs") or None, desc=label, unit="ep",
                                                      leave=False, dynamic_ncols=True)
            bar.set_postfix_str(describe(point), refresh=False)
            bar.update(point["epoch"] + 1 - bar.n)

    def finished(self, rec: dict) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bars.pop(rec["job_id"], None)
            if bar is not None:
                bar.close()
            self.jobs.update(1)
            self.jobs.set_postfix_str(f"{rec['model']}/{rec['dataset']} {rec['status']}")

    def on_epoch(self, spec: dict):
        """The ``on_epoch`` callback of a job run in this process."""
        if not self.enabled:
            return None
        label = job_label(spec)
        return lambda point: self.epoch(spec["job_id"], label, point)

    def close(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            self.jobs.close()


class QueueDrain:
    """Feeds ``(job_id, label, point)`` messages of worker processes to a board until stopped."""

    def __init__(self, q, board: ProgressBoard):
        self.q, self.board = q, board
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                job_id, label, point = self.q.get(timeout=0.2)
            except queue_lib.Empty:
                continue
            except (EOFError, OSError):
                return
            self.board.epoch(job_id, label, point)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
