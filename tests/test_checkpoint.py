"""Orbax expert checkpoints: round trips to host and device; missing/corrupt -> CheckpointError."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from coserve_jax.models import abstract_state, host_init_state, tiny_resnet
from coserve_jax.store.checkpoint import CheckpointError, restore_expert, save_expert

SPEC = tiny_resnet()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "cls_001"
    state = host_init_state(SPEC, 3)
    save_expert(path, state)
    return path, state


def test_round_trip_host(saved):
    path, state = saved
    restored = restore_expert(path, abstract_state(SPEC)[1], expert_id="cls_001")
    leaves = jax.tree.leaves(restored)
    assert all(isinstance(x, np.ndarray) for x in leaves)
    for a, b in zip(jax.tree.leaves(state), leaves):
        np.testing.assert_array_equal(np.asarray(a), b)
    graphdef = abstract_state(SPEC)[0]
    x = np.ones((2, *SPEC.input_shape), np.float32)
    np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, restored)(x)),
                               np.asarray(nnx.merge(graphdef, state)(x)), rtol=1e-6)


def test_round_trip_device(saved):
    path, state = saved
    device = jax.devices()[-1]
    restored = restore_expert(path, abstract_state(SPEC)[1], device=device, expert_id="cls_001")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert isinstance(b, jax.Array) and b.devices() == {device}
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as err:
        restore_expert(tmp_path / "nope", abstract_state(SPEC)[1], expert_id="cls_042")
    assert "cls_042" in str(err.value) and str(tmp_path / "nope") in str(err.value)
    assert "missing" in str(err.value)


def _corrupt_copy(path, bad):
    """A copy of the checkpoint at path whose every file is garbage."""
    shutil.copytree(path, bad)
    for f in bad.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 4)
    return bad


def test_corrupt_checkpoint(saved, tmp_path):
    path, _ = saved
    bad = _corrupt_copy(path, tmp_path / "cls_007")
    with pytest.raises(CheckpointError) as err:
        restore_expert(bad, abstract_state(SPEC)[1], expert_id="cls_007")
    assert "cls_007" in str(err.value) and str(bad) in str(err.value)


def test_wrong_architecture_is_an_error(saved):
    from coserve_jax.models import tiny_yolo

    path, _ = saved
    with pytest.raises(CheckpointError, match="cls_001"):
        restore_expert(path, abstract_state(tiny_yolo())[1], expert_id="cls_001")


# ---- reads in reader processes (store/reader.py) -------------------------------------------
@pytest.fixture(scope="module")
def reader():
    from coserve_jax.store.reader import ProcessReader

    r = ProcessReader(1)
    yield r
    r.close()


def test_process_reader_matches_in_thread_read(saved, reader):
    path, state = saved
    device = jax.devices()[-1]
    restored = restore_expert(path, abstract_state(SPEC)[1], device=device, expert_id="cls_001", reader=reader)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert isinstance(b, jax.Array) and b.devices() == {device}
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_process_reader_reports_corrupt_and_missing(saved, reader, tmp_path):
    path, _ = saved
    bad = _corrupt_copy(path, tmp_path / "cls_007")
    with pytest.raises(CheckpointError, match="cls_007"):
        restore_expert(bad, abstract_state(SPEC)[1], expert_id="cls_007", reader=reader)
    with pytest.raises(CheckpointError, match="missing"):
        restore_expert(tmp_path / "nope", abstract_state(SPEC)[1], expert_id="cls_042", reader=reader)
    # The worker survives its errors and keeps serving.
    restore_expert(path, abstract_state(SPEC)[1], expert_id="cls_001", reader=reader)


def test_process_reader_replaces_a_dead_worker(saved, reader):
    path, _ = saved
    victim = reader._all[0]
    victim.proc.kill()
    victim.proc.wait(5)
    with pytest.raises(CheckpointError, match="reader process died"):
        restore_expert(path, abstract_state(SPEC)[1], expert_id="cls_001", reader=reader)
    assert len(reader._all) == 1 and reader._all[0] is not victim
    restore_expert(path, abstract_state(SPEC)[1], expert_id="cls_001", reader=reader)


def test_process_reader_close_stops_workers():
    from coserve_jax.store.reader import ProcessReader

    r = ProcessReader(2)
    procs = [w.proc for w in r._all]
    r.close()
    assert all(p.poll() is not None for p in procs)  # every worker exited
    with pytest.raises(RuntimeError, match="closed"):
        r("x", [], "cls_001")
    with pytest.raises(ValueError, match="backend.load_processes"):
        ProcessReader(0)
