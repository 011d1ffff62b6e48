"""`triplet-tfx --help` and `triplet-tfx runs` start without TensorFlow: they import only the contract,
the configuration and the pipeline's own light modules (docs/architecture.md, "Dependency rule").
Each runs in a fresh interpreter, as the console script does, since this test process may already
hold TensorFlow."""

import subprocess
import sys
import textwrap

import pytest

_WRAPPER = textwrap.dedent("""
    import sys
    from triplet_tfx.pipeline import cli
    try:
        code = cli.main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
    heavy = sorted(name for name in ("tensorflow", "keras", "tfx", "apache_beam") if name in sys.modules)
    assert not heavy, f"triplet-tfx {' '.join(sys.argv[1:])} loaded {heavy}"
    sys.exit(code)
""")


@pytest.mark.parametrize("args", [["--help"], ["runs", "--output-root", "{root}"]], ids=["help", "runs"])
def test_the_light_commands_do_not_load_tensorflow(tmp_path, args):
    argv = [arg.format(root=tmp_path) for arg in args]
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_console_script_returns_the_commands_code_with_the_heap_frozen_for_exit(tmp_path):
    """`triplet-tfx` is `console_main`: main's exit code, and what is alive then is left out of the
    garbage collector's passes, so that Python's shutdown does not walk TensorFlow's objects."""
    script = textwrap.dedent("""
        import gc, sys
        from triplet_tfx.pipeline import cli
        code = cli.console_main(sys.argv[1:])
        print(gc.get_freeze_count())
        sys.exit(code)
    """)
    for argv, expected in ((["run", "--epochs", "0"], 2), (["runs", "--output-root", str(tmp_path)], 0)):
        done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == expected, done.stdout + done.stderr
        assert int(done.stdout.split()[-1]) > 10_000


def test_the_runs_imports_are_made_without_collections_and_frozen_after():
    """TensorFlow, TFX and Beam's objects live as long as the process: they are imported with the
    collector off and frozen afterwards, so full collections during the run do not walk them."""
    import gc

    from triplet_tfx.pipeline import run_command

    was_enabled = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            frozen_before = gc.get_freeze_count()
            with run_command.long_lived_imports():
                assert not gc.isenabled()
                made = [[i] for i in range(5000)]
            assert gc.get_freeze_count() >= frozen_before + len(made)
            assert gc.isenabled() is enabled
            gc.unfreeze()
    finally:
        (gc.enable if was_enabled else gc.disable)()


@pytest.mark.slow
def test_the_pipelines_libraries_load_without_reading_every_installed_distribution():
    """google-api-core from 2.28 (and the client libraries Beam's I/O imports: BigQuery, Pub/Sub)
    reads the metadata of every installed distribution when imported, ~0.1 s each time, to warn
    about the Python version: constraints.txt keeps it below 2.28."""
    script = textwrap.dedent("""
        from importlib import metadata
        scans = []
        scan = metadata.packages_distributions
        metadata.packages_distributions = lambda: scans.append(1) or scan()
        import triplet_tfx.pipeline.tfx_api, apache_beam.io.gcp.bigquery, apache_beam.io.gcp.pubsub
        print(len(scans))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "0"
