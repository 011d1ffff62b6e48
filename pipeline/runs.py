"""`triplet-tfx runs`: the output root's pipeline runs, read from ML Metadata (read-only).

triplet-tfx runs [--output-root runs]     # one line per run, oldest first
triplet-tfx runs show RUN                 # one run: components, metrics, blessing, push, config
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from triplet_tfx.components.config import PipelineConfig

if TYPE_CHECKING:  # summary loads TensorFlow and TFX: imported where used, so that --help stays fast
    from triplet_tfx.pipeline import summary

# Where a run's configuration is recorded: exec properties (JSON) of these components.
_CONFIG_PROPERTIES = (
    ("SourceExampleGen", "data_config", "data"),
    ("Trainer", "custom_config", None),
    ("EmbeddingEvaluator", "config", None),
)


@dataclasses.dataclass
class RunRecord:
    number: int  # 1 = the oldest run
    summary: summary.RunSummary
    config: Dict[str, object]  # flattened, e.g. {"train.max_steps": 5}
    changes: List[Tuple[str, object, object]]  # (key, previous run's value, this run's value)

    @property
    def blessed(self) -> str:
        s = self.summary
        return (
            "-" if s.blessed is None else "yes (already pushed)" if s.already_pushed else "yes" if s.blessed else "no"
        )

    def describe_changes(self) -> str:
        if self.number == 1:
            return "(first run)"
        return ", ".join(f"{key} {old}->{new}" for key, old, new in self.changes) or "(same configuration)"


def _flatten(values: Dict[str, object], prefix: str = "") -> Dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "lower_bounds":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _run_config(store, run) -> Dict[str, object]:
    from triplet_tfx.pipeline import summary

    config: Dict[str, object] = {}
    for execution in store.get_executions_by_context(run.id):
        component = summary.node_id(store, execution)
        for node, name, section in _CONFIG_PROPERTIES:
            if component == node and name in execution.custom_properties:
                values = json.loads(execution.custom_properties[name].string_value)
                config.update(_flatten({section: values} if section else values))
    return config


def run_records(config: PipelineConfig) -> List[RunRecord]:
    """Every run of the configured pipeline in its output root, oldest first."""
    from triplet_tfx.pipeline import summary

    if not os.path.exists(config.metadata_path):
        return []
    store = summary.open_store(config.metadata_path)
    records: List[RunRecord] = []
    for number, run in enumerate(summary.pipeline_runs(store, config.pipeline_name), start=1):
        values = _run_config(store, run)
        previous = records[-1].config if records else {}
        changes = [
            (key, previous.get(key), value)
            for key, value in sorted(values.items())
            if previous and key in previous and previous[key] != value
        ]
        records.append(RunRecord(number, summary.summarize_run(store, run), values, changes))
    return records


def _count(record: RunRecord, *states: str) -> int:
    return sum(state in states for state in record.summary.executions.values())


def format_table(records: List[RunRecord]) -> str:
    header = ("#", "run (start time)", "ran", "cached", "failed", "P@1", "MAP@R", "blessed", "pushed", "changes")
    rows = [header]
    for r in records:
        m = r.summary.metrics
        rows.append(
            (
                str(r.number),
                r.summary.run_id,
                str(_count(r, "COMPLETE")),
                str(_count(r, "CACHED")),
                str(_count(r, "FAILED", "RUNNING", "NEW", "CANCELED")),
                f"{m['precision_at_1']:.4f}" if "precision_at_1" in m else "-",
                f"{m['map_at_r']:.4f}" if "map_at_r" in m else "-",
                r.blessed,
                os.path.basename(r.summary.pushed_to) if r.summary.pushed_to else "-",
                r.describe_changes(),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows)


def find(records: List[RunRecord], which: str) -> Optional[RunRecord]:
    """A run by its number (#), its run id, or `latest`."""
    if which == "latest":
        return records[-1] if records else None
    return next((r for r in records if which in (str(r.number), r.summary.run_id)), None)


def format_run(record: RunRecord) -> str:
    lines = [
        f"#{record.number}: " + record.summary.format(),
        "Changes from the previous run: " + record.describe_changes(),
        "Configuration:",
    ]
    lines += [f"  {key} = {json.dumps(value)}" for key, value in sorted(record.config.items())]
    return "\n".join(lines)


def runs_command(args) -> int:
    config = PipelineConfig(output_root=os.path.abspath(args.output_root), pipeline_name=args.pipeline_name)
    records = run_records(config)
    if not records:
        print(f"triplet-tfx: no runs of pipeline {config.pipeline_name!r} in {config.metadata_path}")
        return 1 if args.run else 0
    if not args.run:
        print(format_table(records))
        return 0
    record = find(records, args.run)
    if record is None:
        print(f"triplet-tfx: error: no run {args.run!r} (give its # or run id from `triplet-tfx runs`, or latest)")
        return 2
    print(format_run(record))
    return 0


def add_command(commands) -> None:
    defaults = PipelineConfig()
    runs = commands.add_parser(
        "runs",
        help="list this output root's pipeline runs (from ML Metadata)",
        description="List the pipeline runs recorded in <output-root>'s ML Metadata: "
        "start time, components run/cached/failed, metrics, blessing, pushed "
        "version and the configuration changes from the run before.",
    )
    show = runs.add_subparsers(dest="action", metavar="show").add_parser(
        "show", help="print one run: components, metrics, blessing, push, configuration"
    )
    show.add_argument("run", metavar="RUN", help="the run's # or run id (as `triplet-tfx runs` lists them), or latest")
    for parser, default in ((runs, None), (show, argparse.SUPPRESS)):  # SUPPRESS: keep a value given before `show`
        parser.add_argument("--output-root", default=default or defaults.output_root, help="default runs")
        parser.add_argument(
            "--pipeline-name", default=default or defaults.pipeline_name, help=f"default {defaults.pipeline_name}"
        )
    runs.set_defaults(handler=runs_command, run=None, uses_config=False)
