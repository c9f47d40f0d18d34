"""A second demo into the same folder does not silently replace the first one's report, and every
report records where its model came from (the shipped model's build machine and build time)."""

from __future__ import annotations

import json

import pytest

from alignlab.errors import UserError
from alignlab.testbed.demo import DemoSettings, run_demo
from alignlab.testbed.shipped import read_manifest, shipped_dir

pytestmark = pytest.mark.slow


def tiny() -> DemoSettings:
    return DemoSettings(num_prompts=16, k=2, epochs=1.0, eval_prompts=8, eval_every=0)


def test_a_rerun_keeps_the_earlier_report_unless_told_to_replace_it(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(tiny(), out, tmp_path / "cache", progress=False)
    saved = (out / "metrics.json").read_text()
    with pytest.raises(UserError, match=r"holds an earlier demo.s report; .* pass overwrite=True to replace it"):
        run_demo(tiny(), out, tmp_path / "cache", progress=False)
    assert (out / "metrics.json").read_text() == saved  # nothing was touched
    second = run_demo(tiny(), out, tmp_path / "cache", progress=False, overwrite=True)
    assert second["after"] == first["after"]

    manifest = read_manifest(shipped_dir("arithmetic", "sft"))
    provenance = json.loads((out / "metrics.json").read_text())["sft_model_provenance"]
    assert provenance == {"shipped": True, "key": manifest["key"], "built_on": manifest["built_on"],
                          "build_seconds": manifest["build_seconds"], "sha256": manifest["files"]["model.safetensors"]}
    assert provenance["build_seconds"] > 0
