"""Metric sinks: TensorBoard, Weights & Biases and trackio, beside ``metrics.jsonl``.

``metrics.jsonl`` stays the source of truth; a sink gets each of its records as it is written
(rank 0 only), under the record's ``step`` and the same names (``loss``, ``eval/loss``, ...). A
record's numbers go out as they are: NaN and infinities too (each of the three stores them,
where JSON writes null), booleans as 0/1; anything else (text, None) stays in the file only.

Asking for a sink whose library is missing is a ``ConfigError`` when the config is read, before
anything loads (``resolve_report_to``). A run opens its sinks just before its first step
(``open_sinks``) and closes them when it ends, however it ends (a failed run marks its W&B run
failed).

Resuming. TensorBoard: the resumed run writes a new event file in the same folder, opened with
``purge_step`` at the first step it redoes, so TensorBoard drops what the stopped run had logged
from that step on and shows each step once. A fresh start purges from step 0: an earlier run's
events in the same folder no longer show. W&B cannot resume an offline run (syncing a second
offline run with the same id replaces the first) and trackio would keep both copies of the redone
steps, so there each start is a run of its own: a resumed one is named ``NAME-resumed-STEP`` and
logs from the step after its checkpoint, in the same group as the first. W&B's own variables still
apply: ``WANDB_MODE=offline``, ``WANDB_DIR`` (default: the run's output folder), ``WANDB_PROJECT``
(when ``project`` is not set), ``WANDB_ENTITY``.

Any job that makes metrics records can use the same sinks: ``open_sinks(report_to, SinkRun(...))``
returns ``Sinks``, a context manager whose ``write(record)`` takes records as metrics.jsonl holds them.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from alignlab.errors import ConfigError, UserError

# sink name -> the module it needs
SINKS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
DEFAULT_PROJECT = "alignlab"
TENSORBOARD_FOLDER = "tensorboard"  # under the output folder, unless logging_dir says otherwise


def installed(name: str) -> bool:
    """Whether sink ``name``'s library can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(SINKS[name]) is not None
    except (ImportError, ValueError):
        return False


def _missing(name: str) -> str:
    return (f"report_to: {name} needs the {SINKS[name]} package, which is not installed: "
            f"pip install 'alignlab[{name}]' (or pip install {SINKS[name]})")


def resolve_report_to(value: str | Iterable[str] | None) -> list[str]:
    """The sinks a ``report_to`` value names, as TRL takes it: one name or a list of them,
    ``none`` (or nothing) for none, ``all`` for every sink whose library is installed. An unknown
    name, or a sink whose library is not installed, is a one-line ``ConfigError``."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [str(n).strip().lower() for n in names]
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return [n for n in SINKS if installed(n)]
    out: list[str] = []
    for name in names:
        if name in ("none", "all"):
            raise ConfigError(f"report_to: '{name}' cannot be combined with other sinks, got {', '.join(names)}")
        if name not in SINKS:
            close = difflib.get_close_matches(name, list(SINKS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"report_to: unknown sink '{name}': choose from {', '.join(SINKS)}, all or none{hint}")
        if not installed(name):
            raise ConfigError(_missing(name))
        if name not in out:
            out.append(name)
    return out


@dataclass
class SinkRun:
    """What the sinks call a run and where they write."""

    out_dir: Path  # the run's output folder
    name: str  # W&B's and trackio's run name
    group: str | None = None  # W&B's and trackio's group
    project: str | None = None  # W&B's and trackio's project (default $WANDB_PROJECT for W&B, else alignlab)
    logging_dir: Path | None = None  # TensorBoard's folder (default out_dir/tensorboard)
    config: dict[str, Any] = field(default_factory=dict)  # recorded with the run
    resume_step: int | None = None  # the checkpoint's step of a resumed run; None when starting afresh


class Sink(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self, ok: bool) -> None: ...


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """The libraries' banners go to stderr: stdout carries ``alignlab train``'s summary."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class TensorBoardSink:
    """Scalars in a TensorBoard event file (``torch.utils.tensorboard``)."""

    def __init__(self, run: SinkRun):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = run.logging_dir or run.out_dir / TENSORBOARD_FOLDER
        first = 0 if run.resume_step is None else run.resume_step + 1
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=first)
        if run.resume_step is None and run.config:
            import yaml

            text = yaml.safe_dump(run.config, sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "```", global_step=0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self, ok: bool) -> None:
        self.writer.close()


def _resumed_name(run: SinkRun) -> str:
    return run.name if run.resume_step is None else f"{run.name}-resumed-{run.resume_step}"


def _config(run: SinkRun) -> dict[str, Any]:
    return {**run.config, "resumed_from_step": run.resume_step} if run.resume_step is not None else run.config


class WandbSink:
    """A Weights & Biases run; offline with ``WANDB_MODE=offline`` (``wandb sync`` uploads it later).
    W&B's service process writes the run's file and may finish it just after ``finish()`` returns;
    it is complete at the latest when the process exits."""

    def __init__(self, run: SinkRun):
        import wandb

        kwargs: dict[str, Any] = {
            "project": run.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            "name": _resumed_name(run), "group": run.group or run.name, "config": _config(run),
            # given each time: W&B reads its variables once per process
            "dir": os.environ.get("WANDB_DIR") or str(run.out_dir),
        }
        Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        try:
            with _quiet_stdout():
                self.run = wandb.init(**kwargs)
        except Exception as e:  # no API key, an unreachable server, a bad setting
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"report_to: wandb could not start a run: {first} (log in with `wandb login`, "
                            "or log offline with WANDB_MODE=offline)") from None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, ok: bool) -> None:
        with _quiet_stdout():
            self.run.finish(exit_code=0 if ok else 1)


class TrackioSink:
    """A trackio run (local by default: ``trackio show`` opens its dashboard)."""

    def __init__(self, run: SinkRun):
        import trackio

        self.trackio = trackio
        with _quiet_stdout():
            self.run = trackio.init(project=run.project or DEFAULT_PROJECT, name=_resumed_name(run),
                                    group=run.group or run.name, config=_config(run), resume="never", embed=False)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, ok: bool) -> None:
        with _quiet_stdout():
            self.trackio.finish()  # not run.finish(), which leaves the run to be finished again at exit


OPENERS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "trackio": TrackioSink}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record, without its step: NaN and infinities kept, booleans as 0/1."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


class Sinks:
    """The sinks of one run: ``write(record)`` sends a metrics record to each, ``close(ok)`` ends
    them. A context manager that closes them, failed when the block raises."""

    def __init__(self, sinks: list[Sink] | None = None):
        self.sinks = list(sinks or [])

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def write(self, record: dict[str, Any]) -> None:
        if not self.sinks:
            return
        step, values = int(record["step"]), scalars(record)
        for sink in self.sinks:
            sink.log(step, values)

    def close(self, ok: bool = True) -> None:
        """End every sink, even when one fails to. After a failed job (``ok`` false) a sink's own
        failure is only printed, so that it does not hide the job's error."""
        sinks, self.sinks = self.sinks, []
        failed: Exception | None = None
        for sink in reversed(sinks):
            try:
                sink.close(ok)
            except Exception as e:
                print(f"report_to: closing {type(sink).__name__} failed: {e}", file=sys.stderr)
                failed = failed or e
        if failed is not None and ok:
            raise failed

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(ok=kind is None)


def open_sinks(report_to: str | Iterable[str] | None, run: SinkRun) -> Sinks:
    """Open the sinks that ``report_to`` names for ``run`` (see ``resolve_report_to``). One that
    fails to open closes those opened before it. For any job that writes metrics records:
    training runs (``sinks_for``) and comparisons alike."""
    opened: list[Sink] = []
    for name in resolve_report_to(report_to):
        try:
            opened.append(OPENERS[name](run))
        except ImportError as e:  # installed, but broken
            Sinks(opened).close(ok=False)
            raise ConfigError(f"report_to: importing {SINKS[name]} failed ({e}); reinstall it: "
                              f"pip install 'alignlab[{name}]'") from None
        except BaseException:
            Sinks(opened).close(ok=False)
            raise
    return Sinks(opened)


def run_name(cfg) -> str:
    """A training run's name in W&B and trackio: ``run_name``, else its output folder's name."""
    return cfg.tracking.run_name or Path(cfg.output_dir).resolve().name


def sinks_for(cfg, out_dir: Path, resume_step: int | None) -> Sinks:
    """The sinks of a training run (``cfg.tracking``), for its first process only."""
    t = cfg.tracking
    run = SinkRun(out_dir=out_dir, name=run_name(cfg), group=t.run_group, project=t.project,
                  logging_dir=Path(t.logging_dir) if t.logging_dir else None, config=cfg.to_dict(),
                  resume_step=resume_step)
    return open_sinks(t.report_to, run)
