"""Templates in ``pipeline_configs/`` + the records' report.json + ``--set`` -> a Model Garden config.

A template is YAML with two parts: ``od:`` (od's header: base experiment, pretrained checkpoint
name, ...) and ``experiment:`` (overrides merged over Model Garden's registered experiment).
``${name}`` placeholders are filled from the records (class count, shard globs, example counts)
so a user never has to count anything by hand. Validation happens here, before a single training
step, because a wrong glob or class count otherwise costs minutes of graph building to discover.

    python -m od.configs render --config faster_rcnn_resnet18_fpn_cpu --records data/records \
        --set trainer.train_steps=2000 --out pipeline.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from od.console import EXIT_OK, EXIT_USAGE, error
from od.io.files import atomic_write_text
from od.model.errors import ConfigError
from od.model.model_dir import config_yaml
from od.model.render import render
from od.model.templates import available_templates, load_template
from od.options import add_common, add_force, quiet_tensorflow


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m od.configs", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write the complete resolved Model Garden experiment config")
    r.add_argument("--config", metavar="TEMPLATE",
                   help="template name in pipeline_configs/ (e.g. faster_rcnn_resnet18_fpn_cpu) or a YAML path; "
                        "`render NAME` (the template as first argument) means the same")
    r.add_argument("template", nargs="?", metavar="TEMPLATE", help=argparse.SUPPRESS)
    r.add_argument("--records", default="data/records", help="folder with the shards and report.json")
    r.add_argument("--label-map", default=None,
                   help="label_map.pbtxt (default: the one report.json names if it lies inside --records, else "
                        "the classes report.json lists; no file outside --records is opened unless named here)")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted Model Garden key, YAML value: task.model.input_size=[512,512,3]")
    r.add_argument("--auto-size", action="store_true",
                   help="choose the input size (and anchor levels) from the box sizes in report.json, within the "
                        "template's compute budget (od.max_input_pixels); an explicit --set task.model.input_size wins")
    r.add_argument("--out", default=None, help="write here instead of stdout")
    add_force(r, "an existing --out file")
    lst = sub.add_parser("list", help="list the templates")
    add_common(ap, [r, lst])
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_tensorflow(args.verbose)
    if args.cmd == "list":
        for n in available_templates():
            h, _, _ = load_template(n)
            print(f"{n:36s} {h.get('description', '')}")
        return EXIT_OK
    if args.template and args.config and args.template != args.config:
        error(f"two templates: {args.template} and --config {args.config}; pass one")
        return EXIT_USAGE
    args.config = args.config or args.template
    if not args.config:
        error("which template? pass --config NAME (python -m od.configs list shows them)")
        return EXIT_USAGE
    if args.out and Path(args.out).exists() and not args.force:
        error(f"{args.out} exists; pass --force to replace it")
        return EXIT_USAGE
    try:
        r = render(args.config, args.records, args.label_map, args.sets, auto_size=args.auto_size)
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    for line in r.size_lines:
        print(line, file=sys.stderr)
    text = config_yaml(r.params)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"od: wrote {args.out} ({r.header['base_experiment']} + {r.header['template']}, "
              f"num_classes={r.params.task.model.num_classes})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
