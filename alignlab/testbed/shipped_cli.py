"""`alignlab testbed list|build`: the testbed models shipped with alignlab, and rebuilding them here.

The work is ``testbed/shipped.py``'s; this is its command line. Heavy imports wait for the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignlab.errors import ArgumentParser, UserError


def cmd_testbed(tokens: list[str]) -> int:
    """``alignlab testbed list|build``: the shipped testbed models, and rebuilding them here."""
    from alignlab.cache import describe_machine
    from alignlab.tasks import task_names
    from alignlab.testbed import shipped
    from alignlab.testbed.build import STAGES, build_testbed_model, stage_recipe

    parser = ArgumentParser(
        prog="alignlab testbed",
        description="list: the testbed models shipped with alignlab (recipe, build machine, held-out gold; files "
                    "checked against their sha256). build: build their recipes on this machine and compare each "
                    "rebuilt model with the shipped one; with --ship, make the rebuilt models the shipped ones.")
    parser.add_argument("action", choices=["list", "build"])
    parser.add_argument("--task", action="append", choices=task_names(), help="a task (repeatable; default all)")
    parser.add_argument("--stage", action="append", choices=list(STAGES), help="a stage (repeatable; default both)")
    parser.add_argument("--ship", action="store_true", help="write the built models into the package as the shipped "
                                                            "ones (for maintainers)")
    parser.add_argument("--cache-dir", default=None, help="where builds are cached (default $ALIGNLAB_CACHE or "
                                                          "~/.cache/alignlab)")
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(tokens)
    if args.action == "list":
        if args.ship or args.json or args.cache_dir:
            raise UserError("alignlab testbed list: --ship, --json and --cache-dir are options of build")
        for m in shipped.shipped_models(args.task, args.stage):
            gold = m["held_out"]
            state = "files match their sha256" + ("" if m["current"] else "; built from ANOTHER recipe, build "
                                                  "procedure or task options, so not used (its build is)")
            print(f"{m['task']:<12} {m['stage']:<11} {m['path']}\n  built on {describe_machine(m['built_on'])} in "
                  f"{m['build_seconds']:.0f} s; held-out gold sampled {gold['gold/sampled']:.3f}, greedy "
                  f"{gold['gold/greedy']:.3f}; {state}")
        return 0
    report_file = Path(args.json).expanduser() if args.json else None
    if report_file and not report_file.parent.is_dir():  # found now, not after the builds
        raise UserError(f"--json: folder '{report_file.parent}' does not exist")
    if args.ship:
        shipped.check_shippable()
    reports = []
    for task in args.task or task_names():
        for stage in args.stage or STAGES:
            if args.ship:
                built = build_testbed_model(stage_recipe(task, stage), args.cache_dir, progress=True)
                manifest = shipped.ship(task, stage, built)
                reports.append(manifest)
                print(f"shipped {task} {stage}: held-out gold sampled {manifest['held_out']['gold/sampled']:.3f}, "
                      f"greedy {manifest['held_out']['gold/greedy']:.3f} -> {shipped.shipped_dir(task, stage)}")
            else:
                reports.append(shipped.rebuild(task, stage, args.cache_dir))
                print(shipped.rebuild_table(reports[-1]))
    if report_file:
        try:
            report_file.write_text(json.dumps(reports, indent=1))
        except OSError as e:
            raise UserError(f"--json: cannot write '{args.json}': {e.strerror}") from None
    return 0
