"""What `triplet-tfx run` starts early, beside its imports: the evaluator's plot process on standby and
the loading of MNIST."""

import pytest

from triplet_tfx.components.config import EvalConfig, PipelineConfig
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.evaluation import plots
from triplet_tfx.pipeline import run_command


@pytest.mark.parametrize(
    "plot,how,on_standby",
    [
        ("umap", {}, True),
        ("pca", {}, False),
        ("umap", {"data_only": True}, False),
        ("umap", {"served_model": "v"}, False),
    ],
    ids=["umap", "pca", "data-only", "index-refresh"],
)
def test_a_run_that_will_draw_a_umap_plot_starts_its_process_first(tmp_path, monkeypatch, plot, how, on_standby):
    program = tmp_path / "program"  # stands in for Python: the plot process is not asked for here
    program.write_text("#!/bin/sh\nexec sleep 600\n")
    program.chmod(0o755)
    monkeypatch.setattr(plots.sys, "executable", str(program))
    during = []
    monkeypatch.setattr(run_command, "_run_pipeline", lambda *args: during.append(plots._standby))
    config = PipelineConfig(output_root=str(tmp_path / "out"), eval=EvalConfig(plot=plot))
    run_command.run_locally(config, **how)
    standby = during[0]
    assert (standby is not None) is on_standby
    assert plots._standby is None
    if standby is not None:  # stopped when the run ended, since nothing asked for it
        assert standby.process is None and not plots.os.path.exists(standby.folder)


def test_mnist_loaded_in_a_thread_is_loaded_once():
    data_sources._load_mnist.cache_clear()
    data_sources.start_loading_mnist()
    mnist = data_sources.load_mnist()  # waits for the thread's load, then takes it from the cache
    assert data_sources._load_mnist.cache_info().misses == 1
    assert mnist["train"][0].shape == (60000, 28, 28, 1) and mnist["test"][1][0] == 7
