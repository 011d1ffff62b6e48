"""The serving folder: concurrent pushes get their own versions, killed pushes leave nothing a
model server would load, and leftovers are cleaned up (real processes, killed by the test)."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from triplet_tfx.components.serving import serving_folder


def saved_model(folder, content: str):
    """A stand-in SavedModel folder: saved_model.pb plus a variables file, marked with `content`."""
    os.makedirs(os.path.join(folder, "variables"))
    for name in ("saved_model.pb", os.path.join("variables", "variables.data-00000-of-00001")):
        with open(os.path.join(folder, name), "w") as f:
            f.write(content)
    return str(folder)


def content_of(version_folder) -> str:
    with open(os.path.join(version_folder, "saved_model.pb")) as f:
        return f.read()


PUSH = textwrap.dedent("""
    import sys, time
    from triplet_tfx.components.serving import serving_folder
    start = float(sys.argv[3])
    while time.time() < start:  # both processes push in the same second
        time.sleep(0.001)
    print(serving_folder.push_atomically(sys.argv[1], sys.argv[2]))
""")


def test_two_processes_pushing_in_the_same_second_get_two_versions(tmp_path):
    base = str(tmp_path / "serving" / "model")
    models = [saved_model(tmp_path / f"model{i}", f"model {i}") for i in range(2)]
    start = str(time.time() + 1.0)
    processes = [
        subprocess.Popen([sys.executable, "-c", PUSH, model, base, start], stdout=subprocess.PIPE, text=True)
        for model in models
    ]
    pushed = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert pushed[0] != pushed[1]
    assert sorted(os.listdir(base)) == sorted(os.path.basename(p) for p in pushed)  # nothing else inside
    # Each run's reported version holds its own model.
    assert [content_of(p) for p in pushed] == ["model 0", "model 1"]
    assert abs(int(os.path.basename(pushed[0])) - int(os.path.basename(pushed[1]))) == 1


def test_next_version_is_the_clock_or_one_more_than_the_newest(tmp_path):
    base = tmp_path / "model"
    assert serving_folder.next_version(str(base), 1000.7) == 1000
    for name in ("5", "1200", "notes", ".push-tmp-9-1"):
        (base / name).mkdir(parents=True)
    assert serving_folder.versions(str(base)) == [5, 1200]
    assert serving_folder.next_version(str(base), 1000.7) == 1201
    assert serving_folder.next_version(str(base), 5000.0) == 5000


KILLED_PUSH = textwrap.dedent("""
    import shutil, sys, time
    from triplet_tfx.components.serving import serving_folder
    copytree = shutil.copytree
    def slow_copy(src, dst, **kwargs):
        shutil.copy2(src, dst, **kwargs)
        print("copied", flush=True)
        time.sleep(600)  # killed here, midway through the copy
    shutil.copytree = lambda src, dst: copytree(src, dst, copy_function=slow_copy)
    serving_folder.push_atomically(sys.argv[1], sys.argv[2])
""")


def test_a_push_killed_midway_leaves_no_version_and_is_cleaned_up(tmp_path):
    base = str(tmp_path / "model")
    model = saved_model(tmp_path / "candidate", "candidate")
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PUSH, model, base], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert process.stdout.readline().strip() == "copied"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    [leftover] = os.listdir(base)
    assert leftover.startswith(serving_folder.TEMP_PREFIX)  # a name no model server loads
    assert serving_folder.versions(base) == []

    assert serving_folder.clean_serving_folder(base) == [
        f"removed {os.path.join(base, leftover)}, the leftover of an interrupted push (no model server saw it)"
    ]
    pushed = serving_folder.push_atomically(model, base)
    assert os.listdir(base) == [os.path.basename(pushed)] and content_of(pushed) == "candidate"


def test_half_written_versions_of_in_place_copies_are_moved_aside(tmp_path):
    base = tmp_path / "model"
    complete = saved_model(base / "100", "complete")
    (base / "200" / "variables").mkdir(parents=True)  # killed before saved_model.pb was written
    assert serving_folder.clean_serving_folder(str(base)) == [
        f"moved {base / '200'} to {base / '.interrupted-200'}: a half-written version (no saved_model.pb)"
    ]
    assert serving_folder.versions(str(base)) == [100] and content_of(complete) == "complete"


def test_no_clean_up_while_another_process_pushes(tmp_path):
    base = tmp_path / "model"
    (base / ".push-tmp-7-1").mkdir(parents=True)
    with serving_folder.serving_folder_lock(str(base)):
        holder = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from triplet_tfx.components.serving import "
                "serving_folder as s; print(s.clean_serving_folder(sys.argv[1]))",
                str(base),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert holder.stdout.strip() == "[]"
    assert (base / ".push-tmp-7-1").is_dir()


def test_a_push_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    base = tmp_path / "model"
    model = saved_model(tmp_path / "candidate", "x" * 1000)
    real = serving_folder.shutil.disk_usage
    monkeypatch.setattr(serving_folder.shutil, "disk_usage", lambda path: real(path)._replace(free=1500))
    with pytest.raises(serving_folder.NoSpaceError) as raised:
        serving_folder.push_atomically(model, str(base))
    assert str(raised.value) == (
        f"[Errno 28] no space left on device for the model: it needs 0.0 MB, 0.0 MB are free: '{base}'"
    )
    assert os.listdir(base) == []


def test_running_out_of_space_midway_removes_the_partial_copy_and_says_so(tmp_path, monkeypatch):
    base = tmp_path / "model"
    model = saved_model(tmp_path / "candidate", "candidate")
    copytree = serving_folder.shutil.copytree

    def full_disk(src, dst, *_args, **_kwargs):  # also the recursive calls for sub-folders
        def copy(s, d, **kwargs):
            if s.endswith("saved_model.pb"):
                raise OSError(errno.ENOSPC, "No space left on device", d)
            return shutil.copy2(s, d, **kwargs)

        return copytree(src, dst, copy_function=copy)

    monkeypatch.setattr(serving_folder.shutil, "copytree", full_disk)
    with pytest.raises(serving_folder.NoSpaceError, match="no space left on device for the model"):
        serving_folder.push_atomically(model, str(base))
    assert os.listdir(base) == []  # no half-written version, no temporary folder
