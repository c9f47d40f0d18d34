"""A decoding method and its settings, as `alignlab decode` takes them on its command line and a
training run's evaluation takes them in one string (``task_eval_decoding: "best-of-n --n 4 --scorer
task:arithmetic:proxy"``): the method's flags, their checks and the construction of the method
around a base generator.

One parser serves both, so a setting means the same in either place and a bad one fails the same
way: one line, before any model loads. The method's own arguments are checked again by its class.
"""

from __future__ import annotations

import argparse
import math
import shlex
from typing import Any

from alignlab.errors import UserError

METHODS = ("best-of-n", "qalign", "reward-guided", "transfer-q", "urial", "nudging")
NEEDS_SCORER = ("best-of-n", "qalign", "reward-guided")
GREEDY_ONLY = ("nudging",)  # the methods that decode greedily and nothing else
SEARCHES = ("reward-guided", "transfer-q")  # token-level searches: they sample their own scores (no top-p/top-k)
# Flags only some methods read, with the methods that read them and their defaults. Each defaults
# to None on the command line, so a flag given to a method that does not read it is refused rather
# than ignored; check_method then fills in the default.
METHOD_FLAGS = {"n": (("best-of-n",), 4), "pick_temperature": (("best-of-n",), 0.0),
                "calibrate": (("best-of-n",), False), "calibration_samples": (("best-of-n",), 16),
                "steps": (("qalign",), 16), "beta": (("qalign",), 1.0), "vote": (("qalign",), False),
                "burn_in": (("qalign",), 0), "candidates": (("reward-guided", "transfer-q"), 10),
                "guide_weight": (("reward-guided", "transfer-q"), 1.0),
                "lookahead": (("reward-guided", "transfer-q"), None),  # 0 for reward-guided, 20 for transfer-q
                "aligned": (("nudging", "transfer-q"), None), "reference": (("transfer-q",), None),
                "implicit_beta": (("transfer-q",), 0.1), "threshold": (("nudging",), 0.3),
                "prefix": (("urial",), None)}
USES_ALIGNED = METHOD_FLAGS["aligned"][0]  # the methods that take a second, aligned model (--aligned)


def add_method_flags(parser: argparse.ArgumentParser, method_required: bool = True) -> None:
    """The flags that choose a decoding method and set it."""
    parser.add_argument("--method", required=method_required, help=f"decoding method: {', '.join(METHODS)}")
    parser.add_argument("--scorer", default=None, help="the scorer that picks (best-of-n): rm:DIR, "
                                                       "task:NAME[:gold|proxy], fn:MODULE:FUNCTION, judge:DIR, "
                                                       "overlong:cache=N[,max=M] (best-of-n only; max by default "
                                                       "--max-new-tokens), ...")
    parser.add_argument("--n", type=int, default=None, help="best-of-n: candidates per answer (default 4)")
    parser.add_argument("--pick-temperature", type=float, default=None,
                        help="soft best-of-n: pick candidate i with probability ∝ exp(r_i / T) (default 0: the best)")
    parser.add_argument("--calibrate", action="store_true", default=None,
                        help="pick by each reward's quantile among --calibration-samples plain samples of the prompt "
                             "(InfAlign's calibration)")
    parser.add_argument("--calibration-samples", type=int, default=None, help="plain samples per prompt for --calibrate")
    parser.add_argument("--steps", type=int, default=None, help="qalign: Metropolis-Hastings steps per answer (default 16)")
    parser.add_argument("--beta", type=float, default=None, help="qalign: the reward's temperature β in "
                                                                 "π·exp(r/β) (default 1, QAlign's; transfer-q's β "
                                                                 "is --implicit-beta)")
    parser.add_argument("--vote", action="store_true", default=None, help="qalign: answer with the chain's most frequent "
                                                            "answer after --burn-in steps, not its last state")
    parser.add_argument("--burn-in", type=int, default=None, help="qalign: steps left out of the vote (default 0)")
    parser.add_argument("--candidates", type=int, default=None, help="reward-guided, transfer-q: the most likely "
                                                                  "next tokens scored at each step (default 10)")
    parser.add_argument("--guide-weight", type=float, default=None, help="reward-guided, transfer-q: the reward's "
                                                                       "weight beside the logits (transfer-q's α; "
                                                                       "default 1)")
    parser.add_argument("--lookahead", type=int, default=None, help="reward-guided, transfer-q: greedy tokens each "
                                                                    "candidate is rolled out before it is valued "
                                                                    "(default 0 for reward-guided, ARGS; 20 for "
                                                                    "transfer-q)")
    parser.add_argument("--prefix", default=None, help="urial: the in-context prefix file (default: the shipped "
                                                       "preamble and three examples, decoding/prefixes/urial.txt)")
    parser.add_argument("--aligned", default=None, help="the aligned model a method uses: nudging's nudger, "
                                                        "transfer-q's guide (a local directory or a hub name)")
    parser.add_argument("--reference", default=None, help="transfer-q: the model --aligned was trained from; the "
                                                          "guide is β·log(aligned / reference)")
    parser.add_argument("--implicit-beta", type=float, default=None, help="transfer-q: β of the aligned model's "
                                                                          "implicit reward, the β it was trained "
                                                                          "with (default 0.1, DPO's)")
    parser.add_argument("--threshold", type=float, default=None, help="nudging: the aligned model writes where the "
                        "base model's top-1 probability is below this (default 0.3, the paper's; its runs use 0.4)")


def check_method(args: argparse.Namespace) -> None:
    """Everything about the method's settings that can be wrong before a model loads; fills in the
    defaults that depend on the method."""
    if args.method not in METHODS:
        raise UserError(f"--method: unknown decoding method '{args.method}' (methods: {', '.join(METHODS)})")
    for flag, (methods, _) in METHOD_FLAGS.items():
        if getattr(args, flag) is not None and args.method not in methods:
            hint = "; transfer-q's β is --implicit-beta" if flag == "beta" and args.method == "transfer-q" else ""
            what = f"an in-context prefix is for urial, not {args.method}" if flag == "prefix" else \
                f"{args.method} does not read it (it is for {' and '.join(methods)})"
            raise UserError(f"--{flag.replace('_', '-')}: {what}{hint}")
    needs = {"nudging": (("aligned", "an aligned model, the nudger"),),
             "transfer-q": (("aligned", "the aligned model that guides (e.g. a DPO model)"),
                            ("reference", "the model the aligned model was trained from"))}
    for flag, what in needs.get(args.method, ()):
        if getattr(args, flag) is None:
            raise UserError(f"--{flag}: {args.method} needs {what}; give --{flag} DIR")
    calibration_given = args.calibration_samples is not None
    # the defaults of the flags above, now that they are known to be the method's
    for flag, (_, default) in METHOD_FLAGS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    args.lookahead = (20 if args.method == "transfer-q" else 0) if args.lookahead is None else args.lookahead
    if args.lookahead < 0 or not 0 < args.implicit_beta < float("inf"):
        raise UserError(f"--lookahead must be >= 0 and --implicit-beta > 0; got {args.lookahead}, {args.implicit_beta}")
    if args.scorer is not None and not args.scorer.strip():
        raise UserError("--scorer is empty; give a scorer spec (e.g. task:arithmetic or rm:DIR)")
    if args.method in NEEDS_SCORER and not args.scorer:
        raise UserError(f"--scorer: {args.method} needs a scorer (a reward); give one (e.g. --scorer task:arithmetic "
                        "or rm:DIR)")
    if args.scorer:
        check_scorer(args.scorer, args.method, getattr(args, "max_new_tokens", None))
    for flag in ("aligned", "reference"):
        if getattr(args, flag) is not None:
            from alignlab.models import resolve_source

            try:
                resolve_source(getattr(args, flag))
            except UserError as e:
                raise UserError(f"--{flag}: {e}") from None
    if args.method == "qalign" and (args.steps < 0 or not args.beta > 0 or not 0 <= args.burn_in <= args.steps):
        raise UserError(f"--steps must be >= 0, --beta > 0 and --burn-in in [0, steps]; got {args.steps}, {args.beta}, "
                        f"{args.burn_in}")
    for name in ("n", "calibration_samples"):
        value = getattr(args, name)
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if calibration_given and not args.calibrate:
        raise UserError("--calibration-samples: it sets --calibrate's samples; pass --calibrate, or leave it out")
    if not (math.isfinite(args.pick_temperature) and args.pick_temperature >= 0):
        raise UserError(f"--pick-temperature must be a finite number >= 0 (0: the best), got {args.pick_temperature}")
    if args.method in ("reward-guided", "transfer-q"):  # as the searches check them, before a model loads
        if args.candidates < 1:
            raise UserError(f"--candidates must be >= 1, got {args.candidates}")
        if not math.isfinite(args.guide_weight):
            raise UserError(f"--guide-weight must be a finite number, got {args.guide_weight}")
    if args.method == "nudging" and not 0 < args.threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.method == "urial":
        from alignlab.decoding.urial import read_prefix

        read_prefix(args.prefix)  # a missing or empty file fails now


def scores_samples(method: str) -> bool:
    """Whether ``method`` scores whole samples (best-of-n's candidates), whose sampled token counts
    a scorer of lengths (``overlong``) reads; the other methods score texts (partial answers,
    proposals), so ``overlong`` is refused for them."""
    return method == "best-of-n"


def check_scorer(spec: str, method: str, max_new_tokens: int | None = None) -> None:
    """What can be checked of a scorer's spec without loading a model: its kind (or a directory),
    and whole those that load no model (task, length, overlong, fn, bleu); an error names --scorer.
    ``max_new_tokens``: the sampling limit where the caller has one (`alignlab decode`), overlong's
    default ``max``."""
    from pathlib import Path

    from alignlab.rewards import SPECS, load_scorer, spec_problem

    kind = spec.partition(":")[0]
    if kind == "implicit":  # its folders and beta, before its two models load
        problem = spec_problem(spec)
        if problem:
            raise UserError(f"--scorer: {problem}")
    try:
        if kind in ("task", "length", "overlong", "fn", "bleu") or (kind not in SPECS
                                                                    and not Path(spec).expanduser().is_dir()):
            load_scorer(spec, sampled=scores_samples(method), max_new_tokens=max_new_tokens)
    except UserError as e:
        raise UserError(f"--scorer: {e}") from None


class _Parser(argparse.ArgumentParser):
    """Errors as ``UserError`` naming ``field`` (a config field), not an exit with usage."""

    def __init__(self, field: str):
        super().__init__(prog=field, add_help=False, allow_abbrev=False)
        self.field = field

    def error(self, message: str):
        raise UserError(f"{self.field}: {message}")


def parse_method(text: str, field: str = "task_eval_decoding") -> argparse.Namespace:
    """``"METHOD --flag value ..."`` (the flags of `alignlab decode` that set a method) as checked
    settings; an unknown method or flag or a bad value is a one-line error naming ``field``."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise UserError(f"{field}: cannot read '{text}': {e}") from None
    if not tokens or tokens[0].startswith("-"):
        raise UserError(f"{field}: start with the method's name ({', '.join(METHODS)}), then its flags as in "
                        f"`alignlab decode` (e.g. 'best-of-n --n 4 --scorer task:arithmetic'); got '{text}'")
    parser = _Parser(field)
    add_method_flags(parser, method_required=False)
    args = parser.parse_args(["--method", tokens[0], *tokens[1:]])
    try:
        check_method(args)
    except UserError as e:
        raise UserError(f"{field}: {e}") from None
    return args


def method_scorer(args: argparse.Namespace):
    """The scorer the method needs, loaded (None for a method without one); overlong's ``max`` is by
    default the sampling limit ``args.max_new_tokens`` where the command has one (`alignlab decode`)."""
    from alignlab.rewards import load_scorer

    if not args.scorer:
        return None
    try:
        return load_scorer(args.scorer, sampled=scores_samples(args.method),
                           max_new_tokens=getattr(args, "max_new_tokens", None))
    except UserError as e:
        raise UserError(f"--scorer: {e}") from None


def method_models(args: argparse.Namespace, dtype: str = "fp32", trust_remote_code: bool = False,
                  device: Any = "cpu", base_tokenizer: Any = None,
                  base_name: str = "") -> dict[str, tuple[Any, Any]]:
    """The other models the method reads, loaded once: name (aligned, reference) -> (model,
    tokenizer). For transfer-q, their vocabularies are checked against ``base_tokenizer`` first."""
    from alignlab.models import load_model, load_tokenizer

    names = {key: getattr(args, key) for key in ("aligned", "reference") if getattr(args, key, None)}
    tokenizers = {key: load_tokenizer(path, trust_remote_code=trust_remote_code) for key, path in names.items()}
    if args.method == "transfer-q" and base_tokenizer is not None:  # one vocabulary, checked before loading
        from alignlab.decoding.transfer_q import check_vocabulary

        check_vocabulary([(f"the base model {base_name}", base_tokenizer),
                          *((f"the {key} model {names[key]}", tok) for key, tok in tokenizers.items())])
    return {key: (load_model(path, dtype=dtype, trust_remote_code=trust_remote_code).to(device).eval(),
                  tokenizers[key]) for key, path in names.items()}


def build_method(args: argparse.Namespace, model, tokenizer, base, scorer: Any = None,
                 models: dict[str, tuple[Any, Any]] | None = None):
    """The decoding method ``args`` describe, as a ``Generator`` over ``base`` (a generator of
    ``model``); ``scorer`` is the loaded scorer (``method_scorer``), ``models`` the other models
    (``method_models``)."""
    models = models or {}
    if args.method == "best-of-n":
        from alignlab.decoding.best_of_n import BestOfN

        return BestOfN(base, scorer, args.n, temperature=args.pick_temperature, calibrate=args.calibrate,
                       calibration_samples=args.calibration_samples)
    if args.method == "qalign":
        from alignlab.decoding.qalign import QAlign

        return QAlign(base, scorer, args.steps, args.beta, vote=args.vote, burn_in=args.burn_in, tokenizer=tokenizer)
    if args.method == "reward-guided":
        from alignlab.decoding.guided import RewardGuided

        return RewardGuided(model, tokenizer, scorer, k=args.candidates, weight=args.guide_weight,
                            lookahead=args.lookahead)
    if args.method == "transfer-q":
        from alignlab.decoding.transfer_q import TransferQ

        return TransferQ(model, tokenizer, models["aligned"][0], models["reference"][0], k=args.candidates,
                         lookahead=args.lookahead, weight=args.guide_weight, beta=args.implicit_beta)
    if args.method == "nudging":
        from alignlab.decoding.nudging import Nudging

        return Nudging(model, tokenizer, *models["aligned"], args.threshold)
    from alignlab.decoding.urial import InContext, read_prefix

    return InContext(base, read_prefix(args.prefix), tokenizer)
