"""Orbax expert checkpoints: round trips to host and device; missing/corrupt -> CheckpointError."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from coserve_jax.models import abstract_state, host_init_state, tiny_resnet, tiny_yolo
from coserve_jax.store.checkpoint import (HEADER, CheckpointError, checksum, leaf_specs, read_packed,
                                          restore_expert, save_expert)

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
    path, _ = saved
    with pytest.raises(CheckpointError, match="cls_001"):
        restore_expert(path, abstract_state(tiny_yolo())[1], expert_id="cls_001")


def test_older_format_fails_naming_the_path(tmp_path):
    """A format-2 checkpoint (zstd, leaf_sizes + whole-vector crc32) fails clearly, not as corrupt."""
    import orbax.checkpoint as ocp

    leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(host_init_state(SPEC, 3)))]
    flat = np.concatenate([x.ravel() for x in leaves])
    old = {"leaf_sizes": np.array([x.size for x in leaves], np.int64), "flat_float32": flat,
           "crc32": np.array([0], np.int64)}
    path = tmp_path / "cls_002"
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True)).save(path, args=ocp.args.PyTreeSave(old))
    with pytest.raises(CheckpointError, match="older format") as err:
        restore_expert(path, abstract_state(SPEC)[1], expert_id="cls_002")
    assert "cls_002" in str(err.value) and str(path) in str(err.value)


def test_checkpoint_is_plain_orbax(saved):
    """Stock Orbax restores the checkpoint (its format stays Orbax's), and the fast reader's type
    handler serves a stock PyTreeCheckpointHandler restore too."""
    import orbax.checkpoint as ocp

    from coserve_jax.store.orbax_read import IntoArgs, IntoNumpyHandler

    path, _ = saved
    packed = read_packed(path, leaf_specs(abstract_state(SPEC)[1]))
    stock = ocp.PyTreeCheckpointHandler().restore(path)
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, IntoNumpyHandler()), (jax.Array, ocp.type_handlers.ArrayHandler()))
    item = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in packed.items()}
    ours = ocp.PyTreeCheckpointHandler(type_handler_registry=registry).restore(
        path, args=ocp.args.PyTreeRestore(item=item, restore_args={k: IntoArgs() for k in item}))
    assert sorted(stock) == sorted(ours) == sorted(packed) == ["flat_float32", HEADER]
    for k in packed:
        np.testing.assert_array_equal(np.asarray(stock[k]), packed[k])
        np.testing.assert_array_equal(ours[k], packed[k])


def test_read_into_given_buffers(saved):
    path, _ = saved
    specs = leaf_specs(abstract_state(SPEC)[1])
    want = read_packed(path, specs)
    buf = np.zeros_like(want["flat_float32"])
    got = read_packed(path, specs, out={"flat_float32": buf})
    assert got["flat_float32"] is buf
    np.testing.assert_array_equal(buf, want["flat_float32"])


@pytest.mark.parametrize("n", [1, 1023, 1024, 5000, 70_001])  # float32: under, at, over 4 KiB blocks
def test_checksum_sees_flips_zeros_and_moved_blocks(n):
    rng = np.random.default_rng(n)
    v = rng.standard_normal(n).astype(np.float32)
    base = checksum(v)
    assert checksum(v.copy()) == base
    for i in rng.integers(0, v.nbytes * 8, 20):  # single bit flips anywhere, the tail included
        w = v.copy()
        w.view(np.uint8)[i // 8] ^= np.uint8(1 << (i % 8))
        assert checksum(w) != base
    w = v.copy()
    w[n // 2:] = 0
    assert checksum(w) != base
    if n >= 2048:  # two whole 4 KiB blocks swapped
        w = v.copy()
        w[:1024], w[1024:2048] = v[1024:2048], v[:1024]
        assert checksum(w) != base


def test_pieces_checked_as_they_land_give_the_whole_checksum():
    """``_Checksums`` from pieces in any order equals ``checksum``; pieces off the 4 KiB blocks or
    missing one fall back to summing the vector whole."""
    from coserve_jax.store.checkpoint import _Checksums

    v = np.random.default_rng(0).standard_normal(70_001).astype(np.float32)
    bounds = [(lo, min(v.size, lo + 4096)) for lo in range(0, v.size, 4096)]
    for order in (bounds, bounds[::-1]):
        sums = _Checksums()
        for lo, hi in order:
            sums("flat_float32", v, lo, hi)
        assert sums.value("flat_float32", v) == checksum(v)
    for pieces in ([(0, 1000), (1000, v.size)], bounds[:-1]):
        sums = _Checksums()
        for lo, hi in pieces:
            sums("flat_float32", v, lo, hi)
        assert sums.value("flat_float32", v) == checksum(v)


def test_reads_in_pieces_and_cached_opens_still_see_every_change(tmp_path, monkeypatch):
    """Vectors read in many pieces (``orbax_read.PIECE_BYTES`` made small) read back exactly;
    with the checkpoint's arrays kept open between reads, a byte changed in place, a truncated
    data file and a checkpoint written again at the same path are all seen."""
    from coserve_jax.store import orbax_read

    monkeypatch.setattr(orbax_read, "PIECE_BYTES", 16 << 10)
    path = tmp_path / "cls_001"
    state = host_init_state(SPEC, 3)
    save_expert(path, state)
    specs = leaf_specs(state)
    first = read_packed(path, specs)
    assert first["flat_float32"].nbytes > 10 * orbax_read.PIECE_BYTES
    np.testing.assert_array_equal(read_packed(path, specs)["flat_float32"], first["flat_float32"])  # kept open
    data = max((path / "ocdbt.process_0" / "d").iterdir(), key=lambda f: f.stat().st_size)
    size = data.stat().st_size
    with open(data, "r+b") as f:  # one byte, in the middle of the vector
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_packed(path, specs, "cls_001")
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match="unreadable"):
        read_packed(path, specs, "cls_001")
    shutil.rmtree(path)
    other = host_init_state(SPEC, 4)
    save_expert(path, other)
    again = read_packed(path, specs)
    assert not np.array_equal(again["flat_float32"], first["flat_float32"])
    orbax_read._OPENED.clear()  # opened afresh, nothing kept: the same new weights
    np.testing.assert_array_equal(again["flat_float32"], read_packed(path, specs)["flat_float32"])


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


def test_process_reader_lease_lends_its_buffer_and_no_leaf_points_into_it(saved, reader, tmp_path):
    """A device load through the lease copies straight from the staging buffer; the next read
    overwrites that buffer, and the loaded leaves must not change with it (on CPU a device_put
    of the buffer's read-only views aliases them, which the first half shows)."""
    from coserve_jax.store.checkpoint import unpack_onto

    path, state = saved
    other = tmp_path / "cls_002"
    save_expert(other, host_init_state(SPEC, 4))
    specs = leaf_specs(state)
    device = jax.devices("cpu")[0]
    with reader.lease(path, specs, "cls_001") as views:
        assert not views["flat_float32"].flags.writeable
        np.testing.assert_array_equal(views["flat_float32"], read_packed(path, specs)["flat_float32"])
        aliased = jax.device_put(views["flat_float32"], device)
    before = np.asarray(aliased).copy()
    reader(other, specs, "cls_002")  # the worker's next read fills the same buffer
    assert not np.array_equal(np.asarray(aliased), before)  # what must never happen to served leaves

    leaves = unpack_onto(device, path, specs, "cls_001", reader)
    reader(other, specs, "cls_002")
    for a, b in zip(jax.tree.leaves(state), leaves):
        assert b.devices() == {device}
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_process_reader_sends_a_layouts_specs_once_per_worker(saved, reader):
    path, state = saved
    specs = leaf_specs(state)
    w = reader._all[0]
    sent = []
    send = w.conn.send
    w.conn.send = lambda msg: (sent.append(msg), send(msg))[1]
    try:
        for same in (specs, list(specs), tuple(specs)):  # equal specs, other objects
            np.testing.assert_array_equal(reader(path, same, "cls_001")["flat_float32"],
                                          read_packed(path, specs)["flat_float32"])
    finally:
        del w.conn.send
    layouts = {m[1] for m in sent}
    assert len(layouts) == 1 and sum(m[2] is not None for m in sent) <= 1  # sent once (or before)


def test_process_reader_grows_its_staging_buffer(saved, reader, tmp_path):
    """A larger expert after a smaller one: the worker's shared buffer grows, results stay exact."""
    small, _ = saved
    big = tmp_path / "det_000"
    save_expert(big, host_init_state(tiny_yolo(), 5))
    for path, spec in [(small, SPEC), (big, tiny_yolo()), (small, SPEC)]:
        specs = leaf_specs(abstract_state(spec)[1])
        want, got = read_packed(path, specs), reader(path, specs, "x")
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


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
