"""Where a run's figures go: one small sink interface, `metrics.jsonl` always, TensorBoard event files and
Weights & Biases (offline by default, no network) when `log.to` asks for them and the package is there."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from xtalign.config import ConfigError
from xtalign.distill.config import LogConfig

__all__ = ["JsonlWriter", "MetricsSink", "Sinks", "TensorBoardSink", "WandbSink", "build_sinks", "flat_scalars"]



class MetricsSink(Protocol):
    """Takes one record of figures at a step (`kind`: `train` or `eval`)."""

    def write(self, kind: str, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """Appends JSON lines and counts them (the count goes into every checkpoint, for exact resume)."""

    def __init__(self, path: Path, lines: int = 0) -> None:
        self.path, self.lines = path, lines

    def append(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        self.lines += 1


def flat_scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every finite number of a nested record as (`a/b/c`, value); counts and strings are left out."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            yield name, float(value)
        elif isinstance(value, Mapping):
            yield from flat_scalars(value, f"{name}/")


class TensorBoardSink:
    """TensorBoard event files under `<run>/tensorboard` (`tensorboard --logdir <run>/tensorboard`)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("log.to includes tensorboard but the tensorboard package is not installed; "
                              "pip install 'xtalign[tensorboard]' (or drop it from log.to)") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, kind: str, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for name, value in flat_scalars({k: v for k, v in record.items() if k not in ("step", "counts")}):
            self.writer.add_scalar(f"{kind}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run under `<run>/wandb`; one id per run directory, so a resumed run continues the same W&B run."""

    def __init__(self, run_dir: Path, cfg: LogConfig, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("log.to includes wandb but the wandb package is not installed; "
                              "pip install 'xtalign[wandb]' (or drop it from log.to)") from None
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(project=cfg.wandb_project, dir=str(run_dir), mode=cfg.wandb_mode, id=run_id,
                              resume="allow", config=dict(config), reinit="create_new")

    def write(self, kind: str, record: Mapping[str, Any]) -> None:
        data = {f"{kind}/{n}": v for n, v in flat_scalars({k: v for k, v in record.items()
                                                           if k not in ("step", "counts")})}
        self.run.log(data, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """The JSONL files plus the optional sinks, written together."""

    def __init__(self, run_dir: Path, extra: Sequence[MetricsSink], *, metrics_lines: int = 0,
                 eval_lines: int = 0) -> None:
        self.metrics = JsonlWriter(run_dir / "metrics.jsonl", metrics_lines)
        self.evals = JsonlWriter(run_dir / "eval.jsonl", eval_lines)
        self.extra = list(extra)

    def train(self, record: Mapping[str, Any]) -> None:
        self.metrics.append(record)
        for sink in self.extra:
            sink.write("train", record)

    def eval(self, record: Mapping[str, Any]) -> None:
        self.evals.append(record)
        for sink in self.extra:
            sink.write(f"eval/{record['model']}", record)

    def close(self) -> None:
        for sink in self.extra:
            sink.close()


def build_sinks(run_dir: Path, cfg: LogConfig, config: Mapping[str, Any], **lines: int) -> Sinks:
    made: list[MetricsSink] = []
    for name in dict.fromkeys(cfg.to):
        made.append(TensorBoardSink(run_dir) if name == "tensorboard" else WandbSink(run_dir, cfg, config))
    return Sinks(run_dir, made, **lines)
