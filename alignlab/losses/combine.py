"""Weighted sums of registered losses, named by their formula: ``dpo+0.005*sft``,
``0.5*dpo + 0.5*ipo``, ``simpo + 0.1*sft``.

- Every term must train on the same data shape. ``sft`` inside a pairwise combination is the
  token-mean negative log-likelihood of the chosen response, −ℓθ(y_w)/|y_w| (the convention of
  ALGORITHMS.md §0), so ``dpo+0.005*sft`` is RPO's objective.
- The combination's hyperparameters are the union of its terms'. A name two terms share (``beta``
  in ``dpo+ipo``) is one value given to both; terms whose shared names have different defaults
  (``dpo+simpo``: β 0.1 and 2.0; ``cpo+bvpo``: two meanings of ``alpha``) are refused.
- Per-example losses add up with their weights; each term's per-example loss is logged as
  ``terms/<name>`` and the first term's metrics keep their names (the others get ``<name>/``).
- At most one term may carry state (LCPO, BCO); its state is the combination's.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

from alignlab.losses.registry import REGISTRY, LossSpec
from alignlab.losses.types import LossOutput, PairLogps

_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([A-Za-z][A-Za-z0-9_-]*)\s*$")
_COMBOS: dict[str, LossSpec] = {}


def is_combination(name: str) -> bool:
    return "+" in name or "*" in name


@dataclasses.dataclass
class _NoParams:
    pass


def chosen_nll(inputs: PairLogps, params) -> LossOutput:
    """−ℓθ(y_w)/|y_w|: the token-mean NLL of the chosen response (an SFT term on pairs)."""
    nll = -inputs.chosen_mean
    return LossOutput(nll, {"nll/chosen": nll.detach()})


def parse(name: str) -> list[tuple[float, str]]:
    """``"dpo+0.005*sft"`` -> [(1.0, "dpo"), (0.005, "sft")]; a malformed formula is a ValueError."""
    terms = []
    for part in name.split("+"):
        m = _TERM.match(part)
        if not m:
            raise ValueError(f"method: cannot read '{part.strip()}' in '{name}'; write terms as NAME or WEIGHT*NAME "
                             "joined by '+', e.g. dpo+0.005*sft")
        weight = float(m.group(1)) if m.group(1) else 1.0
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"method: the weight of '{m.group(2)}' in '{name}' must be a positive number")
        terms.append((weight, m.group(2)))
    names = [n for _, n in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"method: '{name}' names a loss twice; give it one weight")
    return terms


def _term_fn(spec: LossSpec, shape: str) -> tuple[Callable, type]:
    if spec.shape == shape:
        return spec.fn, spec.params
    if spec.name == "sft" and shape in ("pair", "joint"):
        return chosen_nll, _NoParams
    raise ValueError(f"method: '{spec.name}' trains on {spec.shape} data and cannot be added to a loss on {shape} data")


def combination(name: str) -> LossSpec:
    """The spec of a weighted sum (cached per formula). Unknown terms raise LookupError."""
    key = re.sub(r"\s+", "", name)
    if key in _COMBOS:
        return _COMBOS[key]
    terms = parse(key)
    missing = [n for _, n in terms if n not in REGISTRY]
    if missing:
        raise LookupError(f"method: unknown loss '{missing[0]}' in '{name}'")
    specs = [REGISTRY[n] for _, n in terms]
    trained = [s for s in specs if s.model != "policy"]
    if trained:
        raise ValueError(f"method: '{trained[0].name}' trains a reward model and cannot be added to other losses")
    shapes = [s.shape for s in specs if s.name != "sft"] or ["sft"]
    shape = shapes[0]
    fns = [_term_fn(s, shape) for s in specs]
    if sum(s.init_state is not None for s in specs) > 1:
        raise ValueError(f"method: '{name}' combines two losses that keep state; at most one may")

    fields, seen = [], {}
    for (_, term), (_, cls) in zip(terms, fns, strict=True):
        for f in dataclasses.fields(cls):
            if f.name in seen:
                first, default = seen[f.name]
                if default != f.default:  # one value for two meanings would silently change one term
                    raise ValueError(f"method: '{first}' and '{term}' both have a parameter '{f.name}', with "
                                     f"different defaults ({default} and {f.default}); they cannot share one value")
                continue
            seen[f.name] = (term, f.default)
            fields.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))

    def term_params(self, cls: type):
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def post_init(self) -> None:  # each term checks its own values
        for _, cls in fns:
            term_params(self, cls)

    params_cls = dataclasses.make_dataclass(f"Params_{'_'.join(n.replace('-', '_') for _, n in terms)}", fields,
                                            namespace={"__post_init__": post_init})

    def fn(inputs, params) -> LossOutput:
        total, metrics, stats = None, {}, {}
        for i, ((weight, term), (f, cls)) in enumerate(zip(terms, fns, strict=True)):
            out = f(inputs, term_params(params, cls))
            total = weight * out.losses if total is None else total + weight * out.losses
            metrics[f"terms/{term}"] = out.losses.detach()
            metrics.update({(k if i == 0 else f"{term}/{k}"): v for k, v in out.metrics.items()})
            stats.update(out.stats)
        return LossOutput(total, metrics, stats)

    stateful = next((s for s in specs if s.init_state is not None), None)
    stateful_cls = fns[specs.index(stateful)][1] if stateful else None
    reductions = {s.reduction for s in specs} | ({"mean"} if any(s.name == "sft" for s in specs) else set())
    spec = LossSpec(
        name=key, fn=fn, shape=shape, params=params_cls,
        needs_reference=any(s.needs_reference for s in specs),
        reduction=reductions.pop() if len(reductions) == 1 else "sum+mean",
        paper="; ".join(dict.fromkeys(s.paper for s in specs if s.paper)),
        summary=" + ".join(f"{w:g}·[{n}]" if w != 1 else f"[{n}]" for w, n in terms),
        needs=frozenset().union(*(s.needs for s in specs)),
        init_state=(lambda p: stateful.init_state(term_params(p, stateful_cls))) if stateful else None,
        update_state=(lambda st, sums, p: stateful.update_state(st, sums, term_params(p, stateful_cls)))
        if stateful else None,
        strict_order=any(s.strict_order for s in specs),
        # SFT alone (``0.5*sft``) keeps SFT's token normalisation; in a sum with a preference loss
        # the SFT term is a per-example token mean instead.
        normalize="tokens" if shape == "sft" else "examples",
    )
    _COMBOS[key] = spec
    return spec

