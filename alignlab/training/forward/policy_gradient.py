"""Online training: a micro-batch of sampled completions becomes per-example policy-gradient losses.

The batch's rows are prompt + completion (``rollout.collate_rollout``); the policy's log-probs of
the completion tokens come from one forward pass (``logprobs.sequence_logps``), left-aligned so
that token ``t`` of row ``b`` lines up with the values the round computed for it (advantage, old,
reference and sampler log-probs, carried by the examples). The loss is the method's
(``losses/policy_gradient.py``, or online DPO's ``losses/online_pref.py``); ``units`` is what the
loop divides the step's summed losses by, counted from the examples alone (their aggregation's
units, or the method's own ``LossSpec.units``: online DPO's decisive pairs), so the update does not
depend on how the step is split.

With an entropy bonus (``entropy_coef``) the same entropies, with their gradient, enter the loss;
under adaptive entropy control (``adaptive_entropy``) the forward holds the coefficient as its
state and moves it after each step from the step's mean token entropy (``after_step``). With
``top_entropy_quantile`` < 1 the forward ranks the step's token entropies before its backward
passes (``before_step``) and keeps the policy term of the high-entropy tokens only.
Besides the loss's metrics it logs ``entropy``: the mean over every completion token the step
computes (those a truncation mask leaves out of the loss too; not those of completions left out
for a zero advantage, ``Batch.idle``) of the entropy −Σ_v π(v) log π(v)
of the policy's next-token distribution where the token is predicted, at temperature 1, from the
same forward pass. Each example gives its sum and its token count (``_count/entropy``), which the
loop adds over the step before dividing, so it is one mean over the step's tokens however the step
is split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from alignlab.data.collate import Batch
from alignlab.generation.draw import uniform_bits
from alignlab.logprobs import left_align, sequence_logps
from alignlab.losses.policy_gradient import COV_SURROGATES, PolicyGradientInputs, units
from alignlab.losses.registry import LossSpec
from alignlab.losses.types import LossOutput
from alignlab.training.critic import decoder_output, token_values
from alignlab.training.forward import Forward
from alignlab.training.rollout import collate_rollout, token_tensor


def _token_keys(seed: int, step: int, example) -> np.ndarray:
    """A pseudo-random 64-bit key per completion token of ``example`` (uint64): BLAKE2b of the
    seed, the step, the prompt's row and tokens and the completion's tokens gives the completion's
    key, and SplitMix64's finaliser of that key plus the token's position (times the golden-ratio
    increment) each token's (``draw.uniform_bits``, whose arithmetic wraps modulo 2⁶⁴)."""
    digest = hashlib.blake2b(repr((seed, step, example.row, tuple(example.prompt_ids),
                                   tuple(example.completion_ids))).encode(), digest_size=8).digest()
    base = np.full(len(example.completion_ids), int.from_bytes(digest, "little"), dtype=np.uint64)
    return uniform_bits(base, np.arange(len(example.completion_ids)))


class PolicyGradientForward(Forward):
    def __init__(self, spec: LossSpec, params, max_new_tokens: int, pad_id: int = 0,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext, seed: int = 0):
        """``max_new_tokens``: the completion-length limit, the normaliser of 'constant' aggregation
        when the params give none. ``pad_id``, ``autocast`` and ``seed``: the run's, for the pass
        before a step (``before_step``)."""
        if hasattr(params, "max_completion_length") and params.max_completion_length is None:
            params = dataclasses.replace(params, max_completion_length=max_new_tokens)
        super().__init__(spec, params)
        self.pad_id, self.autocast, self.seed = pad_id, autocast, seed
        self._keep: dict[int, torch.Tensor] | None = None  # per example (by id), its tokens above the step's cut
        self._cov: dict[int, torch.Tensor] | None = None  # per example (by id), its tokens Clip-Cov / KL-Cov select
        self._cut = 0.0
        self.adaptive = bool(getattr(params, "adaptive_entropy", False))
        if self.adaptive:  # the coefficient, and the last step's entropy (−1: none measured yet)
            self.state = {"entropy_coef": float(params.entropy_coef), "entropy_last": -1.0}

    @property
    def stateful(self) -> bool:
        return self.adaptive or super().stateful

    def before_step(self, model: torch.nn.Module, parts: Sequence[Sequence], reduce) -> None:
        """What the step's token selections need from all of the step's completions (every
        micro-batch's, the idle ones included, every process's: ``reduce.gather``), from one pass
        of the policy without gradient in eval mode (no dropout, and no draw from the random
        stream the step's own passes use), at the weights the step's passes run at. It costs a
        forward pass over the step's completions, and is made only for:

        - ``top_entropy_quantile`` ρ < 1 (Wang et al. 2025, "Beyond the 80/20 Rule"): the cut τ is
          the (1 − ρ) quantile (``torch.quantile``'s linear interpolation, as TRL) of the entropies
          of the tokens of the policy term (a truncated completion's are left out under
          ``mask_truncated``, as TRL), and a token keeps its policy term where its entropy is at
          least τ. One cut for the whole step, so that no split of the step changes it: TRL takes
          it per micro-batch.
        - the "clip_cov" and "kl_cov" surrogates: their token selection (``_cov_selection``)."""
        self._keep = self._cov = None
        rho = getattr(self.params, "top_entropy_quantile", 1.0)
        cov = getattr(self.params, "surrogate", None) in COV_SURROGATES
        if rho >= 1.0 and not cov:
            return
        examples = [e for part in parts for e in part]
        logps, entropies = self._step_pass(model, parts, rho < 1.0)
        counted = [e.finished or not self.params.mask_truncated for e in examples]
        if rho < 1.0:
            # one float64 array per process (exact for any float entropies), in rank order
            local = [h.double().numpy() for h, c in zip(entropies, counted, strict=True) if c]
            every = torch.from_numpy(np.concatenate(reduce.gather(np.concatenate(local) if local else np.zeros(0))))
            every = every.to(logps[0].dtype if logps else torch.float32)
            # no token to rank: none keeps its policy term (as TRL)
            self._cut = float(torch.quantile(every, 1.0 - rho)) if every.numel() else float("inf")
            self._keep = {id(e): h >= self._cut for e, h in zip(examples, entropies, strict=True)}
        if cov:
            self._cov = self._cov_selection(examples, logps, counted, reduce)

    def _step_pass(self, model, parts, entropy: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each example's completion-token log-probs and (with ``entropy``) entropies, in order."""
        device = next(model.parameters()).device
        logps: list[torch.Tensor] = []
        entropies: list[torch.Tensor] = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast():
                for part in parts:
                    if not part:
                        continue
                    lp = sequence_logps(model, collate_rollout(part, self.pad_id).to(device), entropy=entropy)
                    tok = left_align(lp.token_logps_BT, lp.mask_BT).cpu()
                    ent = left_align(lp.entropy_BT, lp.mask_BT).cpu() if entropy else None
                    for i, e in enumerate(part):
                        logps.append(tok[i, :len(e.completion_ids)])
                        if entropy:
                            entropies.append(ent[i, :len(e.completion_ids)])
        finally:
            model.train(was_training)
        return logps, entropies

    def _cov_selection(self, examples, logps, counted, reduce) -> dict[int, torch.Tensor]:
        """Clip-Cov's or KL-Cov's tokens (Cui et al. 2025; verl's ``clip_cov`` / ``kl_cov``), per
        example (by id): over the N tokens of the policy term of the step (every process's),
        cov_t = (A_t − Ā)(ℓ_t − ℓ̄) with ℓ the pass's log-probs. KL-Cov takes the max(1, ⌊r·N⌋)
        of largest cov; Clip-Cov as many drawn at random among the tokens with lb < cov < ub that
        the PPO clip leaves unclipped at the pass's ratio to ℓold. The draw orders the tokens by
        a pseudo-random key of the run's seed, the step, and the token's prompt, completion and
        position (``_token_keys``; KL-Cov breaks ties of cov with it too), so neither the order
        the step's completions come in (micro-batches put those left out for a zero advantage
        last) nor the processes change the choice. Two tokens with the same key are the same
        token of the same completion of the same prompt; where that prompt came twice in the step
        (a prompt set smaller than the round, dynamic sampling drawing it again) their advantages
        may differ, and the lower advantage goes first: tokens equal in key and advantage are one
        term."""
        p = self.params
        parts: dict[str, list[np.ndarray]] = {"lp": [], "adv": [], "clipped": [], "key": []}
        for e, lp, c in zip(examples, logps, counted, strict=True):
            if not c:
                continue
            lp = lp.double()
            adv = torch.tensor(e.advantages, dtype=torch.float64)
            old = lp if e.old_logps is None else torch.tensor(e.old_logps, dtype=torch.float64)
            ratio = torch.exp(lp - old)
            clipped = -adv * ratio.clamp(1 - p.eps_low, 1 + p.eps_high) > -adv * ratio
            for name, value in (("lp", lp.numpy()), ("adv", adv.numpy()), ("clipped", clipped.numpy()),
                                ("key", _token_keys(self.seed, reduce.step, e))):
                parts[name].append(value)
        empty = {"lp": np.float64, "adv": np.float64, "clipped": np.bool_, "key": np.uint64}
        mine = {k: np.concatenate(v) if v else np.zeros(0, dtype=empty[k]) for k, v in parts.items()}
        everyone = reduce.gather(mine)  # four arrays per process, in rank order
        offset = sum(len(x["lp"]) for x in everyone[:reduce.dist.rank])
        flat = {k: np.concatenate([x[k] for x in everyone]) for k in empty}
        total = len(flat["lp"])
        selected = torch.zeros(total, dtype=torch.bool)
        if total:
            lp, adv, key = torch.from_numpy(flat["lp"]), torch.from_numpy(flat["adv"]), flat["key"]
            cov = ((adv - adv.mean()) * (lp - lp.mean())).numpy()
            count = max(1, int(p.cov_ratio * total))
            # ties of the key go to the lower advantage: a prompt twice in the step (a small prompt
            # set, dynamic sampling) can give one completion in two groups, one key, two terms
            # (np.lexsort: the last key is the first sorted by)
            if p.surrogate == "kl_cov":
                chosen = np.lexsort((flat["adv"], key, -cov))[:count]
            else:
                eligible = np.flatnonzero((p.clip_cov_lb < cov) & (cov < p.clip_cov_ub) & ~flat["clipped"])
                chosen = eligible[np.lexsort((flat["adv"][eligible], key[eligible]))][:count]
            selected[torch.from_numpy(chosen)] = True
        out, k = {}, offset
        for e, lp, c in zip(examples, logps, counted, strict=True):
            n = len(lp)
            out[id(e)] = selected[k:k + n] if c else torch.zeros(n, dtype=torch.bool)
            k += n if c else 0
        return out

    @staticmethod
    def _token_flags(flags: dict[int, torch.Tensor] | None, examples, width: int) -> torch.Tensor | None:
        """(B, width) bool of per-example token flags the step's pass set (``before_step``)."""
        if flags is None:
            return None
        try:
            rows = [flags[id(e)].tolist() for e in examples]
        except KeyError:
            raise RuntimeError("a micro-batch holds a completion the step's pass before it did not see") from None
        return token_tensor(rows, width).bool()

    def entropy_coef(self) -> float:
        """The entropy bonus's coefficient for this step: the params' own, or under adaptive
        control the controller's, applied only once a step's entropy was measured at or below the
        target (TRL applies none before its first measurement too)."""
        if not self.adaptive:
            return getattr(self.params, "entropy_coef", 0.0)
        last = self.state["entropy_last"]
        return self.state["entropy_coef"] if 0.0 <= last <= self.params.entropy_target else 0.0

    def after_step(self, totals: dict[str, float]) -> None:
        """Adaptive entropy control (Skywork-OR1, arXiv 2505.22312; TRL 1.16's
        ``use_adaptive_entropy``): the step's mean token entropy H (summed over every process's
        completions of the step, ``entropy_sum`` / ``entropy_tokens``) moves the coefficient by
        ``entropy_coef_delta``, up when H ≤ ``entropy_target``, down otherwise, within
        [``entropy_coef_min``, ``entropy_coef_max``]; H is kept for the next step's choice."""
        if not self.adaptive:
            return super().after_step(totals)
        tokens = totals.get("entropy_tokens", 0.0)
        if tokens <= 0:  # no completion token this step: nothing measured
            return
        p, coef, h = self.params, self.state["entropy_coef"], totals["entropy_sum"] / tokens
        coef = min(coef + p.entropy_coef_delta, p.entropy_coef_max) if h <= p.entropy_target \
            else max(coef - p.entropy_coef_delta, p.entropy_coef_min)
        self.state.update(entropy_coef=coef, entropy_last=h)

    @staticmethod
    def _mask_and_flags(examples) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(e.completion_ids) for e in examples], dtype=torch.long)
        width = int(lengths.max()) if len(lengths) else 0
        mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        truncated = torch.tensor([not e.finished for e in examples], dtype=torch.bool)
        return mask, truncated

    def units(self, batch: Batch) -> float:
        """The units of the micro-batch's examples, its idle ones (left out of the forward pass,
        ``Batch.idle``) included: the step's normaliser is the same whether they are computed or not."""
        examples = list(batch.examples) + list(batch.idle)
        if self.spec.units is not None:  # the method counts its own, from the round's sequence advantages
            advantages = torch.tensor([e.advantages[0] if e.advantages else 0.0 for e in examples],
                                      dtype=torch.float64)
            return float(self.spec.units(advantages, self.params).sum())
        mask, truncated = self._mask_and_flags(examples)
        return float(units(self.params.aggregation, mask, truncated if self.params.mask_truncated else None).sum())

    def __call__(self, model: torch.nn.Module, batch: Batch) -> LossOutput:
        examples = batch.examples
        values = None
        coef = self.entropy_coef()
        bonus = coef != 0.0  # the entropy enters the loss, with its gradient
        entropy = "grad" if bonus else True
        if self.spec.value_model:  # one pass of the policy gives its log-probs and a shared head's values
            with decoder_output(model) as seen:
                lp = sequence_logps(model, batch, entropy=entropy)
            values = token_values(model, batch, seen[-1] if seen else None)
        else:
            lp = sequence_logps(model, batch, entropy=entropy)
        logps = left_align(lp.token_logps_BT, lp.mask_BT)
        mask, truncated = self._mask_and_flags(examples)
        width = mask.shape[1]
        logps = logps[:, :width]
        device, dtype = logps.device, logps.dtype

        def per_token(name: str) -> torch.Tensor | None:
            rows = [getattr(e, name) for e in examples]
            if any(r is None or len(r) == 0 for r in rows):
                return None
            return token_tensor(rows, width, dtype=dtype).to(device)

        # the entropies by token, where the bonus or the controller reads them
        entropy_BT = left_align(lp.entropy_BT, lp.mask_BT)[:, :width] if bonus or self.adaptive else None
        inputs = PolicyGradientInputs(
            logps=logps, mask=mask.to(device), advantages=per_token("advantages"),
            old_logps=per_token("old_logps"), ref_logps=per_token("ref_logps"),
            sampler_logps=per_token("sampler_logps"), truncated=truncated.to(device),
            values=None if values is None else values[:, :width].to(dtype), old_values=per_token("old_values"),
            returns=per_token("returns"),
            entropy=entropy_BT if bonus else None)
        keep = self._token_flags(self._keep, examples, width)
        if keep is not None:
            inputs.token_keep = keep.to(device)
        selected = self._token_flags(self._cov, examples, width)
        if selected is not None:
            inputs.cov_selected = selected.to(device)
        params = dataclasses.replace(self.params, entropy_coef=coef) if self.adaptive else self.params
        out = self.spec.fn(inputs, params)
        ranked = mask & ~truncated[:, None] if getattr(self.params, "mask_truncated", False) else mask
        if keep is not None:  # the share of the tokens the cut ranks that are above it, and the cut
            out.metrics["entropy/kept"] = (keep & ranked).sum(-1).to(torch.float64)
            out.metrics["_count/entropy/kept"] = ranked.sum(-1).to(torch.float64)
            out.metrics["entropy/cut"] = torch.full((len(examples),), self._cut, dtype=torch.float64)
        if self.adaptive:  # the step's entropy over the tokens of the policy term, for the controller
            kept = ranked if keep is None else ranked & keep
            ent = entropy_BT.detach()
            out.stats = {"entropy_sum": torch.where(kept.to(ent.device), ent, torch.zeros_like(ent)).sum(-1),
                         "entropy_tokens": kept.sum(-1).to(ent.dtype)}
        out.metrics["reward"] = torch.tensor([e.reward for e in examples], dtype=torch.float64)
        out.metrics["entropy"] = lp.entropy_BT.detach().sum(-1)
        out.metrics["_count/entropy"] = lp.count_B
        if batch.placeholder:  # computed only so that every process runs its passes (``Batch.placeholder``)
            out.metrics = {k: torch.zeros_like(v) for k, v in out.metrics.items()}
            out.stats = {k: torch.zeros_like(v) for k, v in out.stats.items()}
        return out
