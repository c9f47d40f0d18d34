"""`alignlab convert CONVERSION IN OUT [options]`: load one data shape, convert it, write JSON lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alignlab.data import convert
from alignlab.data.load import NOUNS, load_records
from alignlab.data.write import check_jsonl_path, check_not_input, write_jsonl
from alignlab.errors import ArgumentParser, UserError

_OPTIONS = ("rule", "margin", "seed", "rate", "variant")
_SHOWN_LINES = 20


@dataclass(frozen=True)
class Conversion:
    reads: str  # the kind of data loaded from IN
    writes: str  # the kind of data written to OUT
    options: tuple[str, ...]  # the options that apply
    run: Callable[[list[Any], argparse.Namespace], convert.Converted[Any]]
    help: str


def _pairs_of(fn: Callable[..., convert.Converted[Any]]) -> Callable[[list[Any], argparse.Namespace], Any]:
    return lambda records, a: fn(records, a.rule or "best_worst", margin=a.margin or 0.0, seed=a.seed or 0)


CONVERSIONS: dict[str, Conversion] = {
    "scored-to-ranked": Conversion(
        "scored", "ranked", (), lambda records, a: convert.scored_to_ranked(records),
        "group scored responses by prompt into ranked lists (a prompt needs two or more responses)"),
    "scored-to-pairs": Conversion(
        "scored", "pair", ("rule", "margin", "seed"), _pairs_of(convert.scored_to_pairs),
        "group scored responses by prompt, then pair them by --rule"),
    "ranked-to-pairs": Conversion(
        "ranked", "pair", ("rule", "margin", "seed"), _pairs_of(convert.ranked_to_pairs),
        "pair the responses of ranked lists by --rule"),
    "ranked-to-sft": Conversion(
        "ranked", "sft", (), lambda records, a: convert.ranked_to_sft(records),
        "best-of-n SFT data: each list's best response (of ties, the first in the data)"),
    "scored-to-sft": Conversion(
        "scored", "sft", (), lambda records, a: convert.scored_to_sft(records),
        "best-of-n SFT data: each prompt's highest-scored response (of ties, the first in the data)"),
    "pairs-to-unpaired": Conversion(
        "pair", "unpaired", (), lambda records, a: convert.pairs_to_unpaired(records),
        "chosen responses become thumbs up, rejected ones thumbs down"),
    "reward-augment": Conversion(
        "pair", "pair", ("variant",), lambda records, a: convert.reward_augment(records, a.variant or "system"),
        "reward-augmented relabeling of scored pairs: two pairs each, conditioned on a target score"),
    "flip-labels": Conversion(
        "pair", "pair", ("rate", "seed"), lambda records, a: convert.flip_labels(records, a.rate, seed=a.seed or 0),
        "label noise: swap chosen and rejected in round(rate x pairs) pairs drawn with --seed"),
}


# Filters that need a model: `alignlab convert NAME --help` for their flags. The command line routes
# them to their own code (``cli.cmd_convert``), since data/ imports nothing above it.
MODEL_FILTERS = {
    "ches-filter": "pair -> pair: drop the pairs with the highest CHES under --model, the ones DPO would push "
                   "the chosen response down on most (--keep-fraction or --drop-fraction)",
}


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join([f"  {name:<18} {c.reads} -> {c.writes}: {c.help}" for name, c in CONVERSIONS.items()]
                        + [f"  {name:<18} {text}" for name, text in MODEL_FILTERS.items()])
    parser = ArgumentParser(
        prog="alignlab convert",
        description="Convert feedback data from one shape to another; writes JSON lines.",
        epilog="conversions:\n" + listing + "\n\n--columns.FIELD NAME: the input column that holds FIELD "
               "(prompt, chosen, score...) when it is named otherwise",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("conversion", choices=list(CONVERSIONS), metavar="CONVERSION")
    parser.add_argument("input", metavar="IN", help="data file, dataset directory or hub dataset")
    parser.add_argument("output", metavar="OUT", help="the .jsonl file to write")
    parser.add_argument("--rule", choices=convert.PAIR_RULES, help="pairing rule (default best_worst)")
    parser.add_argument("--margin", type=float, help="--rule margin or random: the least score gap of a pair")
    parser.add_argument("--seed", type=int, help="seed of --rule random and of flip-labels (default 0)")
    parser.add_argument("--rate", type=float, help="flip-labels: the fraction of pairs to flip, in [0, 0.5)")
    parser.add_argument("--variant", choices=convert.VARIANTS, help="reward-augment: where the target score "
                                                                   "goes (default system)")
    parser.add_argument("--split", default=None, help="split of a dataset directory or hub dataset")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad input rows (they are counted)")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def cmd_convert(tokens: list[str]) -> int:
    """Run `alignlab convert`; prints what it read, wrote and dropped. Bad input is a ``UserError``."""
    parser = _parser()
    args, rest = parser.parse_known_args(tokens)
    columns = columns_flags(rest, parser)
    conversion = CONVERSIONS[args.conversion]
    _check_options(args, conversion)
    check_jsonl_path(args.output)
    check_not_input(args.output, ("the input", "IN", args.input))
    loaded = load_records(args.input, conversion.reads, columns=columns, skip_invalid=args.skip_invalid,
                          split=args.split)
    print(loaded.summary())
    result = conversion.run(loaded.records, args)
    dropped = ", ".join(f"{reason} ({n})" for reason, n in result.dropped.items())
    if not result.records:
        raise UserError(f"{args.conversion} made nothing from {args.input}" + (f" (dropped {dropped})" if dropped
                                                                              else ""))
    n = write_jsonl(args.output, result.records)
    print(f"wrote {n} {NOUNS[conversion.writes][0 if n == 1 else 1]} to {args.output}")
    if result.merged:
        print(f"merged {result.merged} repeated response{'' if result.merged == 1 else 's'} into an earlier one "
              "with the same prompt and text (a merged response's score is the mean of its scores)")
    if dropped:
        print(f"dropped {dropped}")
    if args.conversion == "flip-labels":
        lines = ", ".join(str(i + 1) for i in result.flipped[:_SHOWN_LINES])
        more = ", ..." if len(result.flipped) > _SHOWN_LINES else ""
        where = f": lines {lines}{more} of {args.output}" if result.flipped else ""
        print(f"flipped {len(result.flipped)} of {n} pairs{where}")
    return 0


def columns_flags(tokens: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """``--columns.FIELD NAME`` (or ``--columns.FIELD=NAME``) options: which column holds a field."""
    columns: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--columns.") or len(token) == len("--columns."):
            parser.error(f"unrecognized arguments: {' '.join(tokens[i:])}")
        field, _, name = token[len("--columns."):].partition("=")
        if not _:
            if i + 1 >= len(tokens):
                parser.error(f"{token} needs a column name")
            name, i = tokens[i + 1], i + 1
        columns[field] = name
        i += 1
    return columns


def _check_options(args: argparse.Namespace, conversion: Conversion) -> None:
    """Refuse options that the conversion would ignore, and a missing --rate."""
    for option in _OPTIONS:
        if getattr(args, option) is not None and option not in conversion.options:
            takes = ", ".join(f"--{o}" for o in conversion.options) or "none"
            raise UserError(f"--{option} does not apply to {args.conversion} (its options: {takes})")
    if args.margin is not None and args.rule not in ("margin", "random"):
        raise UserError("--margin applies to --rule margin only, or to --rule random (the least score gap of "
                        "the pair drawn)")
    if args.seed is not None and "rule" in conversion.options and args.rule != "random":
        raise UserError("--seed applies to --rule random only (the other rules draw nothing)")
    if args.margin is not None and not args.margin >= 0:
        raise UserError(f"--margin must be a number >= 0 (the least score gap of a pair), got {args.margin}")
    if args.rule == "margin" and args.margin is None:
        raise UserError("--rule margin needs --margin (the least score gap of a pair)")
    if args.conversion == "flip-labels" and args.rate is None:
        raise UserError("flip-labels needs --rate (the fraction of pairs to flip, in [0, 0.5))")
