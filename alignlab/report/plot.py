"""PNG plots of a run's evaluation history."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Gold reward (sampled and greedy) and KL to the starting model against the training step.

    ``history`` holds one dict per evaluation with ``step`` and ``eval/gold/*`` keys. The KL is the
    sampled k1 estimate (``eval/sampled.py``), which can dip a little below 0 near the start.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax_gold, ax_kl) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, label in (("eval/gold/sampled", "sampled"), ("eval/gold/greedy", "greedy")):
        ax_gold.plot(steps, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    ax_gold.set_xlabel("optimizer step")
    ax_gold.set_ylabel("gold reward (held-out prompts)")
    ax_gold.legend()
    ax_gold.grid(alpha=0.3)
    ax_kl.plot(steps, [h.get("eval/gold/kl", float("nan")) for h in history], marker="o", color="tab:red")
    ax_kl.set_xlabel("optimizer step")
    ax_kl.set_ylabel("KL(policy ‖ SFT), nats (k1: can dip below 0)")
    ax_kl.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
