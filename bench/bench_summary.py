"""One table of the figures `make bench` collects: the pipeline's fit and main job against the tutorial
notebook's, the training step's GFLOP/s against this machine's float32 matmul peak, and the main
job's components against its wall time.

  .venv/bin/python bench/bench_summary.py --pipeline runs/bench/pipeline.json --train-step runs/bench/train_step.json

The files are written by `bench_pipeline.py --json` and `bench_train_step.py --json`; either may be
left out. Each carries the CPU and date of its measurement (`machine()`).
"""

import argparse
import datetime
import json
import os
import sys

# The main job's components in the table, by the end of their component ids.
COMPONENTS = ("ExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "ServingModelBuilder")


def vector_units(flags: set) -> str:
    """The widest vector arithmetic among a CPU's flags (/proc/cpuinfo): virtual machines of one
    model name ("AMD EPYC", "Intel(R) Xeon(R) Processor") come with AVX2 only, with AVX-512 and
    bfloat16, or also with AMX's bfloat16 tiles, at up to ~2x each other's pace on these networks."""
    if "avx512f" in flags:
        units = "AVX-512 with bf16" if "avx512_bf16" in flags else "AVX-512"
        return units + " and AMX" if "amx_bf16" in flags else units
    return "AVX2" if "avx2" in flags else "no AVX2"


def machine() -> dict:
    """The CPU model and its vector units, its logical CPU count and the date: the stamp of a set of
    figures."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)
    units = f" ({vector_units(flags)})" if flags is not None else ""  # no x86 flags line: the name alone
    return {
        "cpu": names[0] + units if names else "unknown CPU",
        "logical_cpus": len(names) or os.cpu_count(),
        "date": datetime.datetime.now().isoformat(" ", "minutes"),
    }


def write_json(path: str, figures: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(figures, f, indent=1)


def _pipeline_rows(pipeline: dict) -> list:
    first, notebook = pipeline["first_run"], pipeline["tutorial"]
    wall, fit = first["wall"], first["trainer"].get("fit")
    rows = []
    for label, seconds, key in (
        ("Trainer fit vs notebook fit", fit, "fit"),
        ("Trainer fit vs the sum of the notebook's epochs", fit, "epochs"),
        ("main job wall vs notebook wall", wall, "wall"),
    ):
        known = bool(notebook) and notebook.get(key) is not None
        against = (
            f"notebook {notebook[key]:.1f} s (mean of {len(pipeline['tutorial_runs'])})"
            if known
            else "notebook unavailable"
        )
        ratio = f"{seconds / notebook[key]:.2f}x" if known and seconds is not None else "n/a"
        rows.append((label, "n/a" if seconds is None else f"{seconds:.1f} s", against, ratio))
    return rows


def _component_rows(first: dict) -> list:
    wall, seconds = first["wall"], first["seconds"]
    parts = [(f"main job: {name}", sum(s for c, s in seconds.items() if c.endswith(name))) for name in COMPONENTS]
    parts.append(("main job: other components", sum(s for c, s in seconds.items() if not c.endswith(COMPONENTS))))
    parts.append(("main job: start-up, set-up and summary", first["startup"]))
    return [(label, f"{s:.1f} s", f"main job wall {wall:.1f} s", f"{100 * s / wall:.1f}%") for label, s in parts]


def _train_step_rows(train_step: dict) -> list:
    peak = train_step["peak_gflops"]
    precision = train_step.get("precision", "float32")  # figures written before the option: float32
    layers = "" if precision == "float32" else f", {precision}"
    return [
        (
            f"training step: {row['network']}, batch {row['batch_size']}{layers}",
            f"{row['gflops']:.1f} GFLOP/s",
            f"float32 matmul peak {peak:.1f} GFLOP/s",
            f"{100 * row['gflops'] / peak:.1f}%",
        )
        for row in train_step["rows"]
    ]


def table(pipeline: dict | None, train_step: dict | None) -> str:
    """The summary as text: where each set of figures was measured, the table, and notes."""
    lines, rows, notes = [], [], []
    for name, figures in (("main job and notebook", pipeline), ("training step", train_step)):
        if figures:
            stamp = figures["machine"]
            lines.append(f"{name}: {stamp['date']}, {stamp['cpu']}, {stamp['logical_cpus']} logical CPUs")
    if pipeline:
        if pipeline["run_flags"]:
            lines[0] += f"; run flags: {' '.join(pipeline['run_flags'])}"
        rows += _pipeline_rows(pipeline)
        if not pipeline["tutorial"]:
            notes.append(f"Tutorial notebook unavailable: {pipeline['tutorial_note']}.")
    if train_step:
        rows += _train_step_rows(train_step)
    if pipeline:
        rows += _component_rows(pipeline["first_run"])
    rows.insert(0, ("figure", "measured", "against", "ratio"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    rule = "|".join(["", "-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]] + [""])
    cells = [
        "| " + " | ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) + " |"
        for row in rows
    ]
    return "\n".join(lines + ["", cells[0], rule, *cells[1:]] + ([""] + notes if notes else []))


def _load(path: str | None) -> dict | None:
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="JSON of bench_pipeline.py --json")
    parser.add_argument("--train-step", help="JSON of bench_train_step.py --json")
    args = parser.parse_args()
    print(table(*(_load(path) for path in (args.pipeline, args.train_step))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
