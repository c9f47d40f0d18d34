"""Per-process memory of the training state under FSDP2 against a whole copy per process (DDP).

Launched by torchrun (``--nproc_per_node N``), each process builds the same tiny Llama, shards it
with ``alignlab.training.fsdp.shard`` (or, with ``--ddp``, wraps a whole copy in
DistributedDataParallel), takes one AdamW step on the summed log-probs of random tokens, and counts
the bytes it holds of parameters, gradients and AdamW state (its own shard of each: a DTensor's
local tensor). The first process prints one JSON line per process and the largest total.

    torchrun --nproc_per_node 2 bench/fsdp_memory.py --hidden 512 --layers 8
    torchrun --nproc_per_node 2 bench/fsdp_memory.py --hidden 512 --layers 8 --ddp
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile

import torch


def local_bytes(tensors) -> int:
    """Bytes this process holds of ``tensors`` (its shard of a DTensor)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def measure(args) -> dict:
    from alignlab.data.collate import collate_completions
    from alignlab.logprobs import sequence_logps
    from alignlab.models import TinyModelConfig, load_model, save_tiny_model
    from alignlab.training import fsdp
    from alignlab.training.distributed import init_distributed, unwrap, wrap_model
    from alignlab.training.optim import make_optimizer

    dist = init_distributed(group=not args.ddp)
    torch.manual_seed(0)
    tmp = dist.from_main(tempfile.mkdtemp)  # one folder for every process
    if dist.is_main:
        save_tiny_model(tmp, TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers,
                                             intermediate_size=4 * args.hidden, num_heads=8))
    dist.barrier()
    model = load_model(tmp, dtype="fp32")
    dist.barrier()
    if dist.is_main:
        shutil.rmtree(tmp)
    model = wrap_model(model, dist) if args.ddp else fsdp.shard(model, dist, bf16=False)
    net = unwrap(model)
    optimizer = make_optimizer(net, 1e-4, 0.0, (0.9, 0.999), 1e-8)
    vocab = net.config.vocab_size
    g = torch.Generator().manual_seed(dist.rank)
    prompts = [tuple(torch.randint(3, vocab, (8,), generator=g).tolist()) for _ in range(args.batch)]
    completions = [tuple(torch.randint(3, vocab, (24,), generator=g).tolist()) for _ in range(args.batch)]
    batch = collate_completions(prompts, completions, pad_id=0)
    (-sequence_logps(model, batch).sum_B.sum()).backward()
    optimizer.step()
    params = list(net.parameters())
    state = [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    mine = {"rank": dist.rank, "processes": dist.world_size, "mode": "ddp" if args.ddp else "fsdp",
            "parameters": sum(p.numel() for p in params) if args.ddp else None,
            "param_bytes": local_bytes(params), "grad_bytes": local_bytes(p.grad for p in params if p.grad is not None),
            "optimizer_bytes": local_bytes(state), "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    mine["total_bytes"] = mine["param_bytes"] + mine["grad_bytes"] + mine["optimizer_bytes"]
    return {"processes": dist.gather(mine)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ddp", action="store_true", help="a whole copy per process instead of shards")
    args = parser.parse_args()
    out = measure(args)
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_rank() == 0:
        for row in out["processes"]:
            print(json.dumps(row))
        print(json.dumps({"largest_total_bytes": max(r["total_bytes"] for r in out["processes"])}))


if __name__ == "__main__":
    main()
