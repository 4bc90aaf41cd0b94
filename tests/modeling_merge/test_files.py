"""The one atomic-write helper: all or nothing, on disk before the rename, readable under the user's umask,
and the leftovers of an interrupted save recognised and removed (nothing else)."""

import os
import stat

import pytest

from modeling_merge.files import (
    TEMPORARY_SUFFIX,
    atomic_directory,
    atomic_write,
    exclusive_lock,
    remove_leftovers,
)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)

    def set_umask(value):
        os.umask(value)

    yield set_umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_and_folders_get_the_users_umask(tmp_path, umask, mask):
    umask(mask)
    text = atomic_write(tmp_path / "results.json", "{}")
    data = atomic_write(tmp_path / "weights.bin", b"\x00\x01")
    written = atomic_write(tmp_path / "figure.png", lambda temporary: temporary.write_bytes(b"png"))
    with atomic_directory(tmp_path / "best_model") as folder:
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").touch(mode=0o600)  # as safetensors writes, whatever the umask
    for path in (text, data, written, tmp_path / "best_model" / "config.json", tmp_path / "best_model" / "model.safetensors"):
        assert mode(path) == 0o666 & ~mask, path
    assert mode(tmp_path / "best_model") == 0o777 & ~mask
    if mask == 0o027:  # a colleague in the group can read what a run wrote
        assert mode(text) & stat.S_IRGRP and mode(tmp_path / "best_model") & stat.S_IXGRP


def test_content_kinds_round_trip_and_replace_the_old_file(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    atomic_write(path, "first")
    atomic_write(path, "zweite ü")
    assert path.read_text(encoding="utf-8") == "zweite ü"
    atomic_write(path, b"\xff")
    assert path.read_bytes() == b"\xff"
    assert os.listdir(path.parent) == ["file.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, "old")

    def broken(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda source, target: (events.append(("replace", str(source))),
                                                               real_replace(source, target)))
    atomic_write(tmp_path / "rus.safetensors", b"data")
    (fsync_file, temporary), (replace, renamed), (fsync_folder, folder) = events
    assert (fsync_file, replace, fsync_folder) == ("fsync", "replace", "fsync")
    assert temporary == renamed and temporary.endswith(TEMPORARY_SUFFIX)
    assert folder == str(tmp_path)


def test_a_failed_directory_write_keeps_the_old_directory(tmp_path):
    final = tmp_path / "best_model"
    with atomic_directory(final) as folder:
        (folder / "model.safetensors").write_text("good")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_directory(final) as folder:
            (folder / "model.safetensors").write_text("half")
            raise RuntimeError("killed")
    assert (final / "model.safetensors").read_text() == "good"
    assert os.listdir(tmp_path) == ["best_model"]


def test_leftovers_of_an_interrupted_save_are_removed_and_nothing_else(tmp_path):
    ours = [tmp_path / f".results.json.abc123{TEMPORARY_SUFFIX}", tmp_path / f".best_model.x9{TEMPORARY_SUFFIX}"]
    ours[0].write_text("half")
    ours[1].mkdir()
    (ours[1] / "model.safetensors").write_text("half")
    others = [tmp_path / "results.json", tmp_path / ".hidden", tmp_path / f"visible{TEMPORARY_SUFFIX}",
              tmp_path / "rus.safetensors.partial"]
    for path in others:
        path.write_text("keep")
    assert remove_leftovers(tmp_path, "results.json") == [ours[0]]  # only that target's
    ours[0].write_text("half")
    assert sorted(remove_leftovers(tmp_path)) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in others)
    assert remove_leftovers(tmp_path / "missing") == []


def test_a_held_lock_is_an_error_naming_its_owner(tmp_path):
    lock = tmp_path / "run.lock"
    with exclusive_lock(lock, "output directory runs/a"):
        assert f"pid {os.getpid()}" in lock.read_text()
        with pytest.raises(RuntimeError, match=rf"output directory runs/a is in use by another run \(pid {os.getpid()}"):
            with exclusive_lock(lock, "output directory runs/a"):
                pass
    assert not lock.exists()


def test_a_dead_owners_lock_is_reported_and_taken_over(tmp_path, capsys):
    lock = tmp_path / "run.lock"
    lock.write_text("pid 999999 on host gone\n")
    with exclusive_lock(lock, "output directory runs/a"):
        assert f"pid {os.getpid()}" in lock.read_text()
    assert "taking over output directory runs/a from a run that ended without releasing it (pid 999999" in (
        capsys.readouterr().err)
