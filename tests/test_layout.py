"""Folder layout: which data set a verb picks when none is given, and the one atomic write."""

import json
import os
import time

import pytest
from conftest import make_synthetic

from simulacra import layout
from simulacra.cli import main
from simulacra.errors import SimulacraError


def _touch_later(path, seconds=60):
    t = time.time() + seconds
    os.utime(path, (t, t))


def test_latest_dataset_is_the_newest_visible_one(tmp_path):
    root = tmp_path / "datasets"
    assert layout.latest_dataset(root) is None
    make_synthetic(root / "a", lengths=(3,))
    make_synthetic(root / "b", lengths=(3,))
    _touch_later(root / "b/episodes.jsonl")
    assert layout.latest_dataset(root) == root / "b"
    make_synthetic(root / ".c.partial-123", lengths=(3,))  # an import still staging, written last
    _touch_later(root / ".c.partial-123/episodes.jsonl", 120)
    assert layout.latest_dataset(root) == root / "b"


def test_resolve_dataset_says_whether_it_guessed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SimulacraError, match="none under ./datasets"):
        layout.resolve_dataset(None)
    make_synthetic(tmp_path / "datasets/only", lengths=(3,))
    assert layout.resolve_dataset(None) == (os.path.join("datasets", "only"), True)
    assert layout.resolve_dataset("elsewhere") == ("elsewhere", False)


def test_data_info_never_picks_a_staging_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_synthetic(tmp_path / "datasets/done", lengths=(3, 4))
    make_synthetic(tmp_path / "datasets/.x.partial-123", lengths=(5,))
    _touch_later(tmp_path / "datasets/.x.partial-123/episodes.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["data", "info", "--json"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"(using the most recent data set: {os.path.join('datasets', 'done')})")
    assert json.loads(out[out.index("{") :])["episodes"] == 2


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.json"
    layout.atomic_write(p, "one")
    layout.atomic_write(p, b"two")
    assert p.read_text() == "two" and sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]
