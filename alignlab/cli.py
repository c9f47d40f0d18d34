"""The `alignlab` command.

    alignlab train [CONFIG.yaml] [--field value ...]   train with any registered method
    alignlab iterate [CONFIG.yaml] [--field value ...] rounds: sample, score, train an offline method on the
                                                       policy's own samples, repeat (--recipe raft|iterative-dpo)
    alignlab decode --method best-of-n --model M --scorer S (--prompts F | --task T) --output O
                                                       answer through a decoding-time method; with --task,
                                                       gold, win rate against plain sampling, KL, compute
    alignlab methods                                   list the methods and their defaults
    alignlab tiny-model OUT_DIR                        save a tiny Llama + tokenizer for experiments
    alignlab demo [--task T] [--method M] [--seed S]   align a tiny model on a testbed task, before/after table
    alignlab feedback --task T --out DIR [...]         sample and score answers, write every dataset shape
    alignlab sample --model M --prompts F --output O   n samples per prompt of any model and prompt file (or
                                                       --task T), optionally scored (--scorer); resumable
    alignlab testbed list|build [--task T] [--stage S] the shipped testbed models; rebuild them here and compare
    alignlab convert CONVERSION IN OUT [...]           turn data of one shape into another (scored to pairs,
                                                       pairs to unpaired, reward-augment, flip-labels, ...);
                                                       ches-filter drops the pairs with the highest CHES
    alignlab eval SUBCOMMAND [...]                     diagnostics (alignlab eval lists them):
    alignlab eval rm --data PAIRS --model RM_DIR       a reward model's (or, with --scorer, any scorer's)
                                                       accuracy, calibration, length bias, per-subset accuracy
    alignlab eval ranking --data PAIRS --model M       ranking accuracy, idealized ranking accuracy, alignment gap
    alignlab eval displacement --run RUN_DIR           chosen and rejected log-prob change over training
    alignlab eval ches --data PAIRS --model M          CHES scores of each pair
    alignlab compare CONFIG.yaml [--jobs N]            train and evaluate a grid of methods, hyperparameters,
                                                       seeds and decoding methods alike, in parallel, resumably;
                                                       one report (HTML, Markdown, PNG)
    alignlab report FOLDER                             the report of a training run's or a comparison's folder

Every `TrainConfig` field and every hyperparameter of the method is a flag (`--max-steps` and
`--max_steps` both work; `--columns.prompt question` sets one key of a mapping). A field of a
section is given flat or by its section (`--lr 1e-4` or `--optim.lr 1e-4`). A bad value is
reported in one line naming the field, with exit status 2; `--debug` shows the traceback. The
demo, feedback and tiny-model commands build their flags from their settings' dataclasses
(`DemoSettings`, `FeedbackSpec`, `TinyModelConfig`): names, types, defaults and help.

`alignlab train`'s flags are split here, by hand, and read by ``alignlab.config``: the parser
libraries tried (jsonargparse, transformers' HfArgumentParser) could not keep its command line.
jsonargparse takes a sectioned field only by its dotted name (``--lr`` is "unrecognized
arguments"), needs a value after a boolean flag (``--lora``: "expected one argument"), takes a
YAML file only as ``--config`` (a positional one fails inside the library), spells flags with
underscores only (``--optim.batch-size`` is unrecognized), ignores help kept in field metadata,
and reports a bad value on two lines under its dotted name (``Parser key "optim.lr": Expected a
<class 'float'>``) without the file it came from, and an unknown key without a suggestion.
HfArgumentParser has no sections or dotted keys at all (``--columns.prompt`` is refused) and
leaves YAML values unconverted (``lr: abc`` stays a string).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap

from alignlab.compare_cli import cmd_compare, cmd_report
from alignlab.data.convert_cli import cmd_convert as convert_data
from alignlab.errors import ArgumentParser, Interrupted, UserError, command_line
from alignlab.eval_cli import cmd_eval
from alignlab.field_flags import (
    add_field_flags,
    field_values,
)
from alignlab.sample_cli import cmd_sample
from alignlab.testbed.shipped_cli import cmd_testbed

USAGE = "alignlab train [CONFIG.yaml] [--field value ...]"
BARE = None  # the value of a flag given without one


_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "on", "off"}


def _parse_flags(tokens: list[str], bool_keys: frozenset[str] = frozenset(),
                 list_keys: frozenset[str] = frozenset()) -> tuple[str | None, dict, bool]:
    """Split `[CONFIG] --key value --flag ...` into (config path, overrides, debug).

    A boolean key takes the next token only if it reads as a boolean (`--lora`, `--lora false`,
    `--resume run.yaml` all work); another key given without a value maps to BARE. A list key
    takes every value up to the next flag (`--report-to tensorboard wandb`; one value is split at
    its commas), but not a YAML file after its first (`--report-to wandb run.yaml`). Another value
    of a key replaces the earlier one, but a list key given twice is an error (`--reward a
    --reward b` reads as both, and keeping one would drop the other without a word).
    """
    config, overrides, debug = None, {}, False
    last = None  # the flag just read with its value, which a stray token follows
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            if last is not None and not tok.lower().endswith((".yaml", ".yml")):
                raise UserError(f"unexpected argument '{tok}' after '{last}' (a flag takes one value, true or false "
                                "for a switch, a list flag several; the config file, one only, ends in .yaml)")
            if config is not None:
                raise UserError(f"unexpected argument '{tok}' (only one config file can be given)")
            config, last = tok, None
            i += 1
            continue
        start = i
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        i += 1
        if not key:
            raise UserError(f"malformed flag '{tok}'")
        if key == "debug":
            debug, last = True, None
            continue
        if not eq:
            nxt = tokens[i] if i < len(tokens) else None
            if key in bool_keys:
                value = "true"
                if nxt is not None and nxt.lower() in _BOOL_WORDS:
                    value, i = nxt, i + 1
            elif nxt is None or (nxt.startswith("--") and not _is_number(nxt)):
                value = BARE
            else:
                value, i = nxt, i + 1
                if key in list_keys:
                    values = [value]
                    while (i < len(tokens) and not tokens[i].startswith("--")
                           and not (config is None and tokens[i].lower().endswith((".yaml", ".yml")))):
                        values.append(tokens[i])
                        i += 1
                    value = values if len(values) > 1 else value
        if key in overrides and key in list_keys:  # the earlier values would be dropped without a word
            flag = "--" + key.replace("_", "-")
            shown = [" ".join(v) if isinstance(v, list) else v for v in (overrides[key], value)]
            raise UserError(f"{flag} given twice ({shown[0]!r} and {shown[1]!r}); give every value after one "
                            f"flag: {flag} A B")
        overrides[key] = value
        last = " ".join(tokens[start:i]) if not isinstance(value, list) and value is not BARE else None
    return config, overrides, debug


def _bare_flags_to_true(overrides: dict[str, str | None]) -> dict[str, str]:
    """A known non-boolean key given without a value is a mistake; an unknown one passes on as
    true, so that the config reports it with a did-you-mean."""
    from alignlab.config import known_keys

    out = {}
    for key, value in overrides.items():
        if value is BARE:
            if key.split(".", 1)[0] in known_keys():
                raise UserError(f"--{key.replace('_', '-')} needs a value")
            value = "true"
        out[key] = value
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _train_help(rounds: bool = False) -> str:
    from alignlab.config import TrainConfig, field_help, sections
    from alignlab.losses import REGISTRY

    usage = USAGE.replace("alignlab train", "alignlab iterate") if rounds else USAGE
    what = "Run rounds (sample, score, train; rounds: N)" if rounds else "Train a model"
    lines = [f"usage: {usage}", "", f"{what}. Keys come from the YAML file, then from flags. A key of a "
             "section is given flat", "(--lr 1e-4; lr: 1e-4 in YAML) or by its section (--optim.lr 1e-4; optim: "
             "{lr: 1e-4}).", "", "fields:"]

    def add(cls: type) -> None:
        for name, tp, default, help_ in field_help(cls):
            lines.append(f"  --{name.replace('_', '-'):<22} {tp:<6} (default {default!r})")
            lines.extend("        " + w for w in textwrap.wrap(help_, 90))

    add(TrainConfig)
    for s in sections():
        lines += ["", f"  --{s.name}.KEY{'':<{18 - len(s.name)}} section"]
        lines.extend("        " + w for w in textwrap.wrap(s.help, 90))
        add(s.cls)
    lines += ["", "method hyperparameters (give the ones of the chosen --method):"]
    for spec in REGISTRY.values():
        rows = field_help(spec.params)
        lines.append(f"  {spec.name}:" + ("" if rows else " (none)"))
        for name, tp, default, help_ in rows:
            lines.append(f"    --{name.replace('_', '-'):<20} {tp:<6} (default {default!r})  {help_}")
    lines += ["", "  --debug                   show the full traceback of an error"]
    return "\n".join(lines)


def cmd_convert(tokens: list[str]) -> int:
    """``alignlab convert``: the data conversions (``data/convert_cli.py``), and the filters that
    need a model (``ches-filter``, in ``eval_cli.py``: data/ imports nothing above it)."""
    if tokens and tokens[0] == "ches-filter":
        from alignlab.eval_cli import cmd_ches_filter

        return cmd_ches_filter(tokens[1:])
    return convert_data(tokens)


def cmd_decode(tokens: list[str]) -> int:
    from alignlab.decode_cli import cmd_decode as run

    return run(tokens)


def cmd_iterate(tokens: list[str]) -> int:
    """``alignlab train`` for a config that runs rounds (``alignlab.rounds``): without ``rounds`` it
    is an error, so that a forgotten key does not silently train once."""
    return cmd_train(tokens, rounds=True)


def cmd_train(tokens: list[str], rounds: bool = False) -> int:
    if any(t in ("-h", "--help") for t in tokens):
        print(_train_help(rounds))
        return 0
    from transformers.utils import logging as hf_logging

    from alignlab import train
    from alignlab.config import bool_keys, list_keys, load_config

    hf_logging.disable_progress_bar()  # weight loading/saving bars would drown the training bar
    config_path, overrides, _ = _parse_flags(tokens, frozenset(bool_keys()), frozenset(list_keys()))
    cfg = load_config(config_path, _bare_flags_to_true(overrides), need_rounds=rounds)
    summary = train(cfg)
    from alignlab.training.distributed import init_distributed

    if init_distributed().is_main:
        print(summary.to_json())  # the same as the run's summary.json
    return 0


def method_rows() -> list[dict]:
    """Every registered method: data shape, reference, log-prob reduction, defaults, paper."""
    from alignlab.losses import REGISTRY

    return [{
        "method": spec.name, "data": spec.shape, "reference": spec.needs_reference, "trains": spec.model,
        "logps": spec.reduction if spec.model == "policy" else "-", "needs": sorted(spec.needs), "stateful": spec.init_state is not None,
        "defaults": spec.defaults(), "paper": spec.paper, "summary": spec.summary,
    } for spec in REGISTRY.values()]


def methods_markdown() -> str:
    """The README's table of methods (tests check that the README holds it verbatim)."""
    from alignlab.losses.registry import SHAPES

    lines = ["| method | data | reference | log-probs | defaults | objective | source |", "|---|---|---|---|---|---|---|"]
    rows = method_rows()
    for shape in SHAPES:
        for r in (r for r in rows if r["data"] == shape):
            defaults = ", ".join(f"{k}={v}" for k, v in r["defaults"].items()) or "-"
            cells = [f"`{r['method']}`", shape, "yes" if r["reference"] else "no", r["logps"], defaults,
                     r["summary"], r["paper"]]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def cmd_methods(tokens: list[str]) -> int:
    """Every method: its data shape, whether it needs a reference, its defaults and its paper."""
    from alignlab.losses.registry import SHAPES

    rows = method_rows()
    if "--json" in tokens:
        print(json.dumps(rows, indent=1))
        return 0
    for shape, what in SHAPES.items():
        group = [r for r in rows if r["data"] == shape]
        if not group:
            continue
        print(f"== {shape} data: {what.split('; rows: ')[1]}")
        for r in group:
            ref = "reference" if r["reference"] else "no reference"
            defaults = ", ".join(f"{k}={v}" for k, v in r["defaults"].items()) or "-"
            print(f"  {r['method']:<18} {ref:<13} logps={r['logps']:<8} {defaults}")
            print(f"  {'':<18} {r['summary']}  [{r['paper']}]")
    print("Combine methods with weights, e.g. --method 'dpo+0.005*sft' (terms must share a data shape).")
    return 0


# Flags named otherwise than the dataclass field they set, per command; every other field's flag
# is its name with dashes (num_layers: --num-layers).
def cmd_tiny_model(tokens: list[str]) -> int:
    from alignlab.models import TinyModelConfig, save_tiny_model

    parser = ArgumentParser(prog="alignlab tiny-model", description="Save a tiny Llama and tokenizer.")
    parser.add_argument("out_dir", help="folder to save the model and tokenizer to")
    add_field_flags(parser, TinyModelConfig, "tiny-model")
    args = parser.parse_args(tokens)
    out = save_tiny_model(args.out_dir, TinyModelConfig(**field_values(args, TinyModelConfig, "tiny-model")))
    print(f"saved tiny model to {out}")
    return 0


def cmd_demo(tokens: list[str]) -> int:
    from alignlab.testbed.demo import TABLE_NOTE, DemoSettings, default_out_dir, run_demo, table

    parser = ArgumentParser(
        prog="alignlab demo",
        description="Take a testbed task's tiny SFT model (shipped with alignlab), synthesize preferences with the "
                    "task's gold reward, train, and compare gold reward before and after.")
    add_field_flags(parser, DemoSettings, "demo")
    # Options of the run itself, not of its settings.
    parser.add_argument("--out", default=None, help="report folder (default runs/demo-TASK-METHOD-sSEED, and "
                                                    "-proxy, -noiseX, -roundsN when those are set)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo's report in --out")
    parser.add_argument("--cache-dir", default=None, help="where reference log-probs (and models built from a "
                                                          "changed recipe) are cached (default $ALIGNLAB_CACHE or "
                                                          "~/.cache/alignlab)")
    parser.add_argument("--report-to", nargs="+", default=None, metavar="SINK",
                        help="also log the training run to tensorboard, wandb and/or trackio (all: every one "
                             "installed), beside metrics.jsonl")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(tokens)
    settings = DemoSettings(**field_values(args, DemoSettings, "demo"))
    if args.report_to:
        from alignlab.training.sinks import resolve_report_to

        resolve_report_to(args.report_to)  # an unknown or missing sink fails now, not after sampling
    out = args.out or default_out_dir(settings)
    report = run_demo(settings, out, args.cache_dir, progress=not args.no_progress, overwrite=args.overwrite,
                      report_to=args.report_to)
    print(f"\n{args.method} on the {args.task} task, seed {args.seed}: held-out gold reward before and after\n")
    print(table(report))
    print(f"\n{TABLE_NOTE}")
    print(f"\nreport: {out}/metrics.json, {out}/plot.png; trained model: {report['model']} "
          f"({report['seconds']['total']:.0f} s)")
    return 0


def cmd_feedback(tokens: list[str]) -> int:
    from alignlab.testbed.build import STAGES
    from alignlab.testbed.feedback import FeedbackSpec, synthesize
    from alignlab.testbed.shipped import task_model

    parser = ArgumentParser(
        prog="alignlab feedback",
        description="Sample K answers per prompt from a model (by default the task's tiny SFT model), score them "
                    "with the task's gold or proxy reward, and write pairs, ranked lists, thumbs up/down, scored "
                    "answers and negatives as JSONL, with metadata.json.")
    add_field_flags(parser, FeedbackSpec, "feedback", required=("task",))
    # Options of the command itself: where to write, and which model samples.
    parser.add_argument("--out", required=True, help="folder to write the files to")
    parser.add_argument("--model", default=None, help="model to sample from (default: the task's tiny SFT model)")
    parser.add_argument("--from", dest="stage", default="sft", choices=list(STAGES),
                        help="without --model, which tiny testbed model samples: sft (under-trained, its answers "
                             "mix good and bad; default) or pretrained (pretrained longer, not fine-tuned: cleaner "
                             "answers; the testbed's reward-model backbone)")
    parser.add_argument("--cache-dir", default=None, help="where testbed models built from a changed recipe are "
                                                          "cached (default $ALIGNLAB_CACHE or ~/.cache/alignlab)")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(tokens)
    spec = FeedbackSpec(**field_values(args, FeedbackSpec, "feedback"))
    model = args.model or task_model(args.task, args.stage, args.cache_dir, progress=True)
    meta = synthesize(model, spec, args.out, progress=True)
    print(json.dumps({"out": args.out, "model": str(model), "rows": meta["rows"], "flipped_pairs": meta["flipped_pairs"],
                      "mean_score": meta["mean_score"]}, indent=1))
    return 0


COMMANDS = {"train": cmd_train, "iterate": cmd_iterate, "decode": cmd_decode, "eval": cmd_eval, "methods": cmd_methods, "tiny-model": cmd_tiny_model, "demo": cmd_demo,
            "feedback": cmd_feedback, "sample": cmd_sample, "convert": cmd_convert, "testbed": cmd_testbed,
            "compare": cmd_compare, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 2 for a user error, 130 when interrupted, 141
    when the reader of stdout went away, as in ``alignlab methods | head``). Run as the program
    (no ``argv``) in a process of a multi-process run, it exits instead (``_exit_launched``)."""
    code = _main(argv)
    if argv is None:
        _exit_launched(code)
    return code


def _exit_launched(code: int) -> None:
    """End a process of a multi-process run (torchrun, accelerate launch) whose command returned,
    without finalizing the interpreter: non-daemon threads are joined, exit handlers run and the
    output is flushed as at a normal exit, then the process ends with ``code``. Elsewhere, return.

    A gloo worker thread drops a collective's work (a barrier's holds the works before it) only
    after the process waiting on it has gone on, and the work holds tensors made in Python,
    whose last reference takes the interpreter's lock. Once the interpreter is finalizing, that
    ends the thread inside a C++ destructor: "terminate called without an active exception",
    SIGABRT, for a run that had finished (on a busy machine, after train()'s final barrier).
    Ending the process group does not prevent it: DistributedDataParallel keeps references to the
    group, so its threads are never joined. Without finalization nothing of Python is torn down
    under them."""
    tdist = sys.modules.get("torch.distributed")  # imported by a command that trained, never here
    if tdist is None or not tdist.is_available() or not tdist.is_initialized() or tdist.get_world_size() < 2:
        return
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # what is still buffered fails here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # some other pipe or socket broke: that is not the reader going away
        # Nothing more can be printed; point stdout at devnull so that the interpreter's own flush
        # at exit does not fail again, and stop without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reading end is closed (poll reports an error or a
    hang-up on it); True where poll cannot be asked, False for a stdout that is no file."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] in ("-V", "--version"):
        from alignlab import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"alignlab: unknown command '{command}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    debug = "--debug" in rest
    try:
        with command_line():  # messages name options as flags (--overwrite, not overwrite=True)
            return COMMANDS[command](rest)
    except UserError as e:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun/accelerate, one process speaks
            print(f"alignlab: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"alignlab: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("alignlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
