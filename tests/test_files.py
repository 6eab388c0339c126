"""Atomic, checksummed files (`moe_interp.core._files`): a write killed at any moment leaves the old
file or the new one and no temporary file; the checksum is the documented sha256."""

import hashlib
import os

import pytest
import torch

from moe_interp.core._files import checksum, replace_file, write_directory


class Killed(Exception):
    pass


def _crash(*args, **kwargs):
    raise Killed


def test_a_replace_killed_at_the_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")
    monkeypatch.setattr(os, "replace", _crash)
    with pytest.raises(Killed):
        replace_file(path, lambda temp: temp.write_text("new"))
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_replace_killed_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half_then_crash(temp):
        temp.write_text("ne")
        raise Killed

    with pytest.raises(Killed):
        replace_file(path, half_then_crash)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_new_directory_killed_before_its_rename_leaves_nothing(tmp_path, monkeypatch):
    files = {"x.txt": lambda temp: temp.write_text("x"), "y.txt": lambda temp: temp.write_text("y")}
    real = os.replace
    # the files' own renames go through; the directory's rename into place is killed
    monkeypatch.setattr(os, "replace", lambda a, b: _crash() if str(b) == str(tmp_path / "run") else real(a, b))
    with pytest.raises(Killed):
        write_directory(tmp_path / "run", files)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    out = write_directory(tmp_path / "run", files)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"x.txt": "x", "y.txt": "y"}


def test_an_existing_directory_has_its_files_replaced_and_others_kept(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x.txt").write_text("old")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    write_directory(tmp_path / "run", {"x.txt": lambda temp: temp.write_text("new")})
    assert {p.name: p.read_text() for p in (tmp_path / "run").iterdir()} == {"x.txt": "new", "notes.txt": "mine"}


def test_the_checksum_is_sha256_of_the_header_then_each_tensor_by_name(tmp_path):
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3, 4]], dtype=torch.int64)
    # by hand: the header, then for each tensor in name order "\0name\0dtype\0shape\0" and its bytes
    digest = hashlib.sha256(b"{\"f\": 1}")
    digest.update(b"\0a\0torch.float32\0(2,)\0" + a.numpy().tobytes())
    digest.update(b"\0b\0torch.int64\0(1, 2)\0" + b.numpy().tobytes())
    assert checksum('{"f": 1}', {"b": b, "a": a}) == digest.hexdigest()


def test_the_checksum_sees_a_shape_change_of_the_same_bytes():
    x = torch.arange(6.0)
    assert checksum("", {"x": x.reshape(2, 3)}) != checksum("", {"x": x.reshape(3, 2)})


def test_a_new_file_gets_the_users_umask_and_a_replaced_file_keeps_its_mode(tmp_path):
    """Saved stats files were mode 0600 (a temporary file's) whatever the umask (issue 26, section 3)."""
    import os
    import stat

    from safetensors.torch import save_file

    old = os.umask(0o027)
    try:
        replace_file(tmp_path / "t.safetensors", lambda temp: save_file({"x": torch.zeros(1)}, str(temp)))
        assert stat.S_IMODE((tmp_path / "t.safetensors").stat().st_mode) == 0o640
        os.chmod(tmp_path / "t.safetensors", 0o604)
        replace_file(tmp_path / "t.safetensors", lambda temp: save_file({"x": torch.ones(1)}, str(temp)))
        assert stat.S_IMODE((tmp_path / "t.safetensors").stat().st_mode) == 0o604
    finally:
        os.umask(old)
