"""`bench/generate_vs_hf.py` at its smallest: the native backend and ``model.generate`` sample the
same prompts in one invocation, and the report's ratio and FLOP count are what they claim."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_model_flops_are_the_hand_count():
    """A Llama of hidden 8, 1 layer, 2 heads of 4, MLP 16, vocabulary 10, untied: the matmuls but
    the output layer hold q, k, v, o 4·8·8 = 256 and the MLP 3·8·16 = 384 weights, and the bench
    counts the 3 norms' 24 weights with them: 664; the output layer 80; attention 2·2·8 = 32 FLOPs
    per position attended. A prompt of 3 tokens and one sample of 2 generated tokens: the prompt
    2·664·3 = 3984 plus 32·(1+2+3) = 192; the sample feeds back 1 token, 2·664 = 1328, which
    attends 4 positions, 128; the output layer runs for 2 tokens, 2·80·2 = 320. Total 5952."""
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import generate_vs_hf
    finally:
        sys.path.remove(str(REPO / "bench"))
    config = transformers.LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, intermediate_size=16, vocab_size=10,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    assert generate_vs_hf.model_flops(model, [(1, 2, 3)], [[2]]) == 5952.0


@pytest.mark.slow
def test_smallest_run_compares_native_with_generate(tmp_path):
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "generate_vs_hf.py"), "--model", "tiny", "--prompts", "4", "--samples", "2",
         "--max-new-tokens", "8", "--subset", "2", "--hf-batches", "4", "--native-batch", "8", "--parts", "full",
         "--threads", "1", "--work", str(tmp_path)],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    native, hf = (json.loads((tmp_path / f"{name}.result.json").read_text()) for name in ("native", "generate"))
    for r in (native, hf):  # 4 prompts × 2 samples, each of 1 to 8 tokens (end-of-sequence counted)
        assert r["sequences"] == 8 and 8 <= r["tokens"] <= 64 and r["seconds"] > 0 and r["flops"] > 0
    assert "all 4 prompts:" in out
    ratio = re.search(r"native / generate at its best batch: (\d+\.\d+)× tokens/s", out)
    want = (native["tokens"] / native["seconds"]) / (hf["tokens"] / hf["seconds"])
    assert ratio and float(ratio.group(1)) == pytest.approx(want, abs=0.006)
    assert re.search(r"native\s+batch\s+8\s", out) and re.search(r"generate\s+batch\s+4\s", out)
