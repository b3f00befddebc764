"""A catalogue of bad input, as a careless user or an attacker gives it. Every case checks three things:
a non-zero exit, exactly one line on stderr naming the problem (the option or the file), and the data
intact (the checksum of every file before and after). Hangs and kills are in test_concurrency.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_one_line_error, make_synthetic, run_cli, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from simulacra.data.interop import EXPORTERS
from simulacra.data.store import INFO, MANIFEST, Dataset, DatasetWriter
from simulacra.errors import DatasetError

HYPO = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HYPO_IMPORT = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UNWRITABLE = Path("/sys/simulacra-cannot-write-here")


def _unwritable_ok() -> bool:
    try:
        UNWRITABLE.mkdir()
    except OSError:
        return True
    UNWRITABLE.rmdir()
    return False


needs_unwritable = pytest.mark.skipif(not _unwritable_ok(), reason="no folder here that even root cannot write")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def ds(tmp_path):
    root = tmp_path / "ds"
    make_synthetic(root, lengths=(6, 5, 4), frame=16, block_frames=4)
    return root


def _lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]


def _write_lines(root: Path, lines: list[dict]) -> None:
    (root / MANIFEST).write_text("".join(json.dumps(d) + "\n" for d in lines))


def _edit_info(root: Path, **fields) -> None:
    info = json.loads((root / INFO).read_text())
    for k, v in fields.items():
        if v is _DROP:
            info.pop(k, None)
        else:
            info[k] = v
    (root / INFO).write_text(json.dumps(info))


_DROP = object()


# ---- 1. numbers on the command line: refused before anything is read or written ---------------------------
RECORD_OPTIONS = [
    (["--resolution", "0"], "--resolution"),
    (["--resolution", "7"], "--resolution"),
    (["--resolution", "100000"], "--resolution"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--seed", str(2**32 - 1), "--episodes", "2"], "--seed"),
    (["--policy", "bogus"], "--policy"),
    (["--policy", "carracing", "--sticky", "0.5"], "sticky"),
    (["--episodes", "0"], "--episodes"),
    (["--episodes", "-3"], "--episodes"),
    (["--num-envs", "0"], "--num-envs"),
    (["--num-envs", "-2"], "--num-envs"),
    (["--num-envs", "100000"], "--num-envs"),
    (["--max-episode-steps", "0"], "--max-episode-steps"),
    (["--max-episode-steps", "-5"], "--max-episode-steps"),
    (["--sticky", "1.5"], "--sticky"),
    (["--sticky", "-0.1"], "--sticky"),
    (["--env-timeout", "0"], "--env-timeout"),
    (["--env-timeout", "-1"], "--env-timeout"),
    (["--env-timeout", "nan"], "--env-timeout"),
    (["--preset", "nope"], "nope"),
    (["--env-id", ""], "--env-id"),
    (["--env-kwargs", "novalue"], "--env-kwargs"),
    (["--env-kwargs", '{"unclosed": 1'], "--env-kwargs"),
    (["--env-kwargs", "[1, 2]"], "--env-kwargs"),
    (["--resume", "--overwrite"], "--resume"),
    (["--state", "bogus"], "--state"),
    (["--state", "no_such_module_xyz:read"], "--state"),
]


@pytest.mark.parametrize("args, names", RECORD_OPTIONS, ids=[" ".join(a) for a, _ in RECORD_OPTIONS])
def test_record_numbers_are_checked_before_anything_is_written(tmp_path, capsys, ds, args, names):
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "record", "--preset", "debug", "--out", tmp_path / "new", *args)
    assert_one_line_error(code, err, names)
    assert not (tmp_path / "new").exists() and snapshot(tmp_path) == before


def test_record_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "record", "--preset", "debug", "--out", "")
    assert_one_line_error(code, err, "--out")
    assert not list(tmp_path.iterdir())


VIEW_OPTIONS = [
    (["--episodes", "0"], "--episodes"),
    (["--episodes", "-1"], "--episodes"),
    (["--max-frames", "0"], "--max-frames"),
    (["--max-frames", "-4"], "--max-frames"),
    (["--scale", "0"], "--scale"),
    (["--scale", "-2"], "--scale"),
    (["--scale", "1000"], "--scale"),
    (["--fps", "0"], "--fps"),
]


@pytest.mark.parametrize("args, names", VIEW_OPTIONS, ids=[" ".join(a) for a, _ in VIEW_OPTIONS])
def test_view_numbers_are_checked(tmp_path, capsys, ds, args, names):
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "view", ds, "--out", tmp_path / "p.mp4", *args)
    assert_one_line_error(code, err, names)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["0", "4", "-64", "99999"])
def test_import_resolution_is_checked(tmp_path, capsys, ds, value):
    EXPORTERS["lerobot"](Dataset.open(ds), str(tmp_path / "lr"))
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "import", tmp_path / "lr", "--out", tmp_path / "o", "--resolution", value)
    assert_one_line_error(code, err, "--resolution")
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


# ---- 2. output paths: files, paths under files, folders we may not write, folders of other files -----------
def _out_cases(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "afile").write_text("precious")
    return {"is-a-file": tmp_path / "afile", "under-a-file": tmp_path / "afile" / "sub" / "x"}


@pytest.mark.parametrize("case", ["is-a-file", "under-a-file"])
@pytest.mark.parametrize("verb", ["record", "import", "export", "view"])
def test_output_path_that_is_or_lies_under_a_file(tmp_path, capsys, ds, verb, case):
    EXPORTERS["lerobot"](Dataset.open(ds), str(tmp_path / "lr"))
    out = _out_cases(tmp_path)[case]
    if verb == "view" and case == "is-a-file":
        out = tmp_path / "adir.mp4"  # for a file verb, the bad case is a folder
        out.mkdir()
    before = snapshot(tmp_path)
    args = {
        "record": ["record", "--preset", "debug", "--out", out],
        "import": ["data", "import", tmp_path / "lr", "--out", out],
        "export": ["data", "export", ds, "--out", out],
        "view": ["data", "view", ds, "--out", out if case == "is-a-file" else out.with_suffix(".mp4")],
    }[verb]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "--out", str(out) if case == "is-a-file" else "afile")
    assert snapshot(tmp_path) == before


@needs_unwritable
@pytest.mark.parametrize("verb", ["record", "import", "export", "view"])
def test_unwritable_output_folder(tmp_path, capsys, ds, verb):
    EXPORTERS["lerobot"](Dataset.open(ds), str(tmp_path / "lr"))
    before = snapshot(tmp_path)
    args = {
        "record": ["record", "--preset", "debug", "--episodes", "1", "--out", UNWRITABLE],
        "import": ["data", "import", tmp_path / "lr", "--out", UNWRITABLE],
        "export": ["data", "export", ds, "--out", UNWRITABLE],
        "view": ["data", "view", ds, "--out", UNWRITABLE / "p.mp4"],
    }[verb]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, str(UNWRITABLE))
    assert snapshot(tmp_path) == before and not UNWRITABLE.exists()


def test_view_refuses_a_file_type_it_cannot_write(tmp_path, capsys, ds):
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "view", ds, "--out", tmp_path / "p.txt")
    assert_one_line_error(code, err, "--out", ".mp4")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("verb", ["record", "import"])
def test_folder_of_other_files_is_never_written_into(tmp_path, capsys, ds, verb, overwrite):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (photos / "data").mkdir()
    (photos / "data" / "album.txt").write_text("summer")
    EXPORTERS["lerobot"](Dataset.open(ds), str(tmp_path / "lr"))
    before = snapshot(tmp_path)
    args = ["record", "--preset", "debug"] if verb == "record" else ["data", "import", tmp_path / "lr"]
    code, _, err = run_cli(capsys, *args, "--out", photos, *(["--overwrite"] if overwrite else []))
    assert_one_line_error(code, err, str(photos))
    assert snapshot(tmp_path) == before and sorted(os.listdir(photos)) == ["cat.jpg", "data"]


@pytest.mark.parametrize(
    "info", ['{"format": "someone-else", "version": 3}', "{not json", "[1, 2]"], ids=["foreign", "corrupt", "list"]
)
def test_overwrite_refuses_an_info_json_that_is_not_ours(tmp_path, capsys, info):
    out = tmp_path / "other"
    out.mkdir()
    (out / INFO).write_text(info)
    (out / "notes.txt").write_text("keep")
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "record", "--preset", "debug", "--out", out, "--overwrite")
    assert_one_line_error(code, err, str(out), "no simulacra data set")
    assert snapshot(tmp_path) == before


def test_existing_data_set_needs_overwrite(tmp_path, capsys, ds):
    before = snapshot(tmp_path)
    for args in (["record", "--preset", "debug"], ["data", "import", ds, "--format", "videos"]):
        code, _, err = run_cli(capsys, *args, "--out", ds)
        assert_one_line_error(code, err, "already holds a data set", "--overwrite")
    assert snapshot(tmp_path) == before


def test_overwrite_of_info_without_manifest_works(tmp_path, capsys):
    """Today's bug: --overwrite deleted the info.json, then crashed on the missing manifest."""
    out = tmp_path / "half"
    make_synthetic(out, lengths=(3,))
    (out / MANIFEST).unlink()
    code, _, err = run_cli(
        capsys, "record", "--preset", "debug", "--episodes", "1", "--num-envs", "1", "--out", out, "--overwrite"
    )
    assert code == 0, err
    ds = Dataset.open(out)
    assert len(ds) == 1 and ds.info["preset"] == "debug" and ds.verify()["ok"]


def test_overwrite_keeps_files_the_store_did_not_make(tmp_path, capsys, ds):
    (ds / "preview.mp4").write_bytes(b"an old preview")
    code, _, err = run_cli(
        capsys, "record", "--preset", "debug", "--episodes", "1", "--num-envs", "1", "--out", ds, "--overwrite"
    )
    assert code == 0, err
    assert len(Dataset.open(ds)) == 1 and (ds / "preview.mp4").read_bytes() == b"an old preview"
    assert sorted(p.name for p in (ds / "data/chunk-000").iterdir()) == ["episode_000000.sep"]


# ---- 3. a damaged data set: verify, info and view say so in one line; nothing is changed ------------------
def _dup_line(root):
    lines = _lines(root)
    _write_lines(root, [*lines, lines[0]])


def _dup_index(root):
    lines = _lines(root)
    lines[2]["index"] = lines[0]["index"]
    _write_lines(root, lines)


def _set(i, **fields):
    def edit(root):
        lines = _lines(root)
        lines[i].update(fields)
        _write_lines(root, lines)

    return edit


def _outside_shard(root):
    outside = root.parent / "outside.sep"
    shutil.copy(root / _lines(root)[0]["file"], outside)
    _set(0, file="../outside.sep")(root)


def _symlinked_shard(root):
    outside = root.parent / "outside.sep"
    shard = root / _lines(root)[1]["file"]
    shutil.move(shard, outside)
    shard.symlink_to(outside)


def _shard_is_a_folder(root):
    shard = root / _lines(root)[1]["file"]
    shard.unlink()
    shard.mkdir()


def _shard_missing(root):
    (root / _lines(root)[1]["file"]).unlink()


def _flip_byte(root):
    shard = root / _lines(root)[1]["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55
    shard.write_bytes(bytes(data))


def _truncate(root):
    shard = root / _lines(root)[2]["file"]
    shard.write_bytes(shard.read_bytes()[:-20])


def _edit_header(fix_manifest: bool, old: bytes, new: bytes):
    """Edit the shard's JSON header in place (same length); with ``fix_manifest`` the attacker also updates
    nbytes and checksum, so only the header check can catch it."""

    def edit(root):
        from simulacra.data.store import file_checksum

        lines = _lines(root)
        shard = root / lines[0]["file"]
        data = shard.read_bytes()
        assert old in data
        data = data.replace(old, new, 1)
        shard.write_bytes(data)
        if fix_manifest:
            lines[0].update(nbytes=len(data), checksum=file_checksum(data))
            _write_lines(root, lines)

    return edit


def _leftover_partial(root):
    partial = root.parent / f".{root.name}.partial-{_dead_pid()}"
    partial.mkdir()
    (partial / INFO).write_text("{}")


def _tmp_in_root(root):
    (root / ".tmp-info.json").write_text('{"format": "simul')


def _torn_manifest(root):
    with open(root / MANIFEST, "a") as f:
        f.write('{"index": 3, "file": "data/ch')


def _not_utf8(root):
    (root / MANIFEST).write_bytes((root / MANIFEST).read_bytes() + b'\xff\xfe{"index": 9}\n')


DAMAGE = {
    # manifest lines
    "duplicated-line": (_dup_line, ["episodes.jsonl: line 4", "listed twice"]),
    "duplicated-index": (_dup_index, ["episodes.jsonl: line 3", "index"]),
    "file-outside": (_outside_shard, ["episodes.jsonl: line 1", "outside"]),
    "file-absolute": (_set(0, file="/etc/passwd"), ["episodes.jsonl: line 1", "/etc/passwd"]),
    "file-symlink-out": (_symlinked_shard, ["episode_000001.sep", "symlink"]),
    "length-huge": (_set(0, length=100_000_000), ["episodes.jsonl: line 1", "length 100000000"]),
    "length-off-by-one": (_set(1, length=6), ["episode_000001.sep", "steps"]),
    "length-zero": (_set(1, length=0), ["line 2", "length"]),
    "length-string": (_set(1, length="5"), ["line 2", "length"]),
    "nbytes-wrong": (_set(2, nbytes=4000), ["episode_000002.sep", "4000"]),
    "nbytes-negative": (_set(2, nbytes=-1), ["line 3", "nbytes"]),
    "checksum-wrong": (_set(0, checksum="0" * 32), ["episode_000000.sep", "checksum"]),
    "checksum-not-hex": (_set(0, checksum="zz"), ["line 1", "checksum"]),
    "index-negative": (_set(0, index=-1), ["line 1", "index"]),
    "index-bool": (_set(0, index=True), ["line 1", "index"]),
    "has-actions-flipped": (_set(0, has_actions=False), ["episode_000000.sep", "arrays"]),
    "seed-string": (_set(0, seed="7"), ["line 1", "seed"]),
    "extra-list": (_set(0, extra=[1]), ["line 1", "extra"]),
    "line-is-a-list": (lambda r: (r / MANIFEST).write_text("[1, 2]\n"), ["line 1", "list"]),
    "line-lacks-file": (lambda r: (r / MANIFEST).write_text('{"index": 0}\n'), ["line 1", "file"]),
    "not-utf8": (_not_utf8, ["episodes.jsonl", "UTF-8"]),
    # shards
    "shard-is-a-folder": (_shard_is_a_folder, ["episode_000001.sep"]),
    "shard-missing": (_shard_missing, ["episode_000001.sep", "missing"]),
    "shard-flipped-byte": (_flip_byte, ["episode_000001.sep"]),
    "shard-truncated": (_truncate, ["episode_000002.sep"]),
    "header-action-dtype": (_edit_header(False, b'"dtype": "<i8"', b'"dtype": "<f8"'), ["episode_000000.sep"]),
    "header-action-dtype-manifest-fixed": (
        _edit_header(True, b'"dtype": "<i8"', b'"dtype": "<f8"'),
        ["episode_000000.sep", "'action'", "<f8"],
    ),
    "header-length-manifest-fixed": (
        _edit_header(True, b'"length": 6', b'"length": 7'),
        ["episode_000000.sep", "header says 7 steps"],
    ),
    # info.json
    "info-block-frames-0": (lambda r: _edit_info(r, block_frames=0), ["info.json", "block_frames"]),
    "info-block-frames-str": (lambda r: _edit_info(r, block_frames="4"), ["info.json", "block_frames"]),
    "info-frame-shape-null": (lambda r: _edit_info(r, frame_shape=None), ["info.json", "frame_shape"]),
    "info-frame-shape-2d": (lambda r: _edit_info(r, frame_shape=[16, 16]), ["info.json", "frame_shape"]),
    "info-frame-shape-other": (lambda r: _edit_info(r, frame_shape=[16, 8, 3]), ["episode_000000.sep", "frames"]),
    "info-no-frame-shape": (lambda r: _edit_info(r, frame_shape=_DROP), ["info.json", "frame_shape"]),
    "info-no-block-frames": (lambda r: _edit_info(r, block_frames=_DROP), ["info.json", "block_frames"]),
    "info-no-format": (lambda r: _edit_info(r, format=_DROP), ["info.json", "format"]),
    "info-version-str": (lambda r: _edit_info(r, format_version="1"), ["info.json", "format version"]),
    "info-fps-0": (lambda r: _edit_info(r, fps=0), ["info.json", "fps"]),
    "info-fps-str": (lambda r: _edit_info(r, fps="fast"), ["info.json", "fps"]),
    "info-a-list": (lambda r: (r / INFO).write_text("[]"), ["info.json", "list"]),
    "info-not-json": (lambda r: (r / INFO).write_text("{"), ["info.json", "corrupt"]),
    "info-state-names-str": (lambda r: _edit_info(r, state_names="x"), ["info.json", "state_names"]),
    "info-state-names-dup": (lambda r: _edit_info(r, state_names=["x", "x"]), ["info.json", "state_names"]),
    "info-state-names-num": (lambda r: _edit_info(r, state_names=[1]), ["info.json", "state_names"]),
    "info-is-a-folder": (lambda r: ((r / INFO).unlink(), (r / INFO).mkdir()), ["info.json"]),
    "info-fewer-actions": (
        lambda r: _edit_info(r, action_space={"type": "discrete", "n": 1, "start": 0}),
        ["episode_00000", "outside the action space"],
    ),
    "info-box-actions": (
        lambda r: _edit_info(r, action_space={"type": "box", "shape": [1], "low": [0], "high": [1]}),
        ["episode_000000.sep", "'action'"],
    ),
    # leftovers of interrupted writes
    "leftover-partial-folder": (_leftover_partial, [".ds.partial-", "--repair"]),
    "leftover-tmp-in-root": (_tmp_in_root, [".tmp-info.json"]),
    "leftover-torn-line": (_torn_manifest, ["episodes.jsonl", "cut short"]),
}


def test_a_state_array_that_does_not_fit_its_names_is_refused(tmp_path, capsys):
    """state (per frame, one column per name in info.json): a shard whose state has other columns, or a
    writer handed a state of the wrong shape, is one line naming the file or the shape."""
    root = tmp_path / "st"
    w = DatasetWriter(root, {"frame_shape": [8, 8, 3], "action_space": {"type": "discrete", "n": 2, "start": 0},
                             "state_names": ["x", "y"]})  # fmt: skip
    f = np.zeros((4, 8, 8, 3), np.uint8)
    args = (f, np.zeros(3, np.int64), np.zeros(3), np.zeros(3, bool), np.zeros(3, bool))
    w.add_episode(*args, state=np.ones((4, 2)), lives=np.array([3, 3, 2, 2]))
    with pytest.raises(DatasetError, match="state is"):
        w.add_episode(*args, state=np.ones((3, 2)))
    with pytest.raises(DatasetError, match="state is"):
        w.add_episode(*args, state=np.full((4, 2), np.nan))
    with pytest.raises(DatasetError, match="lives"):
        w.add_episode(*args, lives=np.ones(3))
    assert Dataset.open(root).arrays(0)["state"].shape == (4, 2)
    _edit_info(root, state_names=["x"])
    code, _, err = run_cli(capsys, "data", "verify", root)
    assert_one_line_error(code, err, "episode_000000.sep", "'state'")


@pytest.mark.parametrize("case", list(DAMAGE))
def test_verify_catches_damage_in_one_line(tmp_path, capsys, ds, case):
    damage, names = DAMAGE[case]
    damage(ds)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "data", "verify", ds)
    assert_one_line_error(code, err, *names)
    assert snapshot(tmp_path) == before
    code, out, err = run_cli(capsys, "data", "verify", ds, "--json")
    assert code == 1
    if out.startswith("{"):  # damage verify could list (the rest stops the data set from opening at all)
        assert not json.loads(out)["ok"]


SHARD_ONLY = {"info-frame-shape-other", "info-fewer-actions", "info-box-actions"}  # only reading shards shows these
OPEN_REFUSES = [
    c
    for c, (_, names) in DAMAGE.items()
    if (c.startswith("info-") and c not in SHARD_ONLY) or any("line " in n for n in names) or c == "not-utf8"
]


@pytest.mark.parametrize("case", OPEN_REFUSES)
def test_damage_in_manifest_or_info_is_refused_at_open(tmp_path, capsys, ds, case):
    """What train would have trusted: the data set does not even open, and `data info` says why."""
    damage, names = DAMAGE[case]
    damage(ds)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError) as e:
        Dataset.open(ds)
    assert "\n" not in str(e.value)
    code, _, err = run_cli(capsys, "data", "info", ds)
    assert_one_line_error(code, err, *[n for n in names if "sep" not in n])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "case",
    ["length-off-by-one", "nbytes-wrong", "checksum-wrong", "header-action-dtype", "header-action-dtype-manifest-fixed",
     "shard-flipped-byte", "shard-truncated", "shard-is-a-folder", "has-actions-flipped", "info-fewer-actions"],
)  # fmt: skip
def test_check_episodes_names_the_first_bad_file(ds, case):
    DAMAGE[case][0](ds)
    d = Dataset.open(ds)
    bad = next(i for i in range(len(d)) if _fails(lambda i=i: d.check_episodes([i])))
    with pytest.raises(DatasetError) as e:
        Dataset.open(ds).check_episodes(range(len(d)))
    assert f"episode_{bad:06d}.sep" in str(e.value) and "\n" not in str(e.value)


def _fails(fn) -> bool:
    try:
        fn()
    except DatasetError:
        return True
    return False


def test_check_episodes_passes_a_clean_data_set_and_refuses_unknown_episodes(ds):
    d = Dataset.open(ds)
    d.check_episodes(range(len(d)))
    with pytest.raises(DatasetError, match="no episode 7"):
        d.check_episodes([7])


def test_edited_action_dtype_is_caught_when_arrays_are_read_without_checksums(ds):
    """The case train hit: checksums skipped, actions silently read as zeros. Now the dtype check stops it."""
    _edit_header(True, b'"dtype": "<i8"', b'"dtype": "<f8"')(ds)
    with pytest.raises(DatasetError, match=r"episode_000000\.sep: array 'action' is stored as '<f8'"):
        Dataset.open(ds).arrays(0)
    with pytest.raises(DatasetError):
        from simulacra.data.windows import WindowDataset

        WindowDataset(Dataset.open(ds), num_steps=2)[0]


def test_huge_manifest_length_is_refused_before_any_allocation(ds):
    _set(0, length=100_000_000, nbytes=10**9)(ds)  # nbytes large enough to pass the cheap bound
    d = Dataset.open(ds)
    from simulacra.data.windows import WindowDataset

    with pytest.raises(DatasetError, match="header says 6 steps"):  # the header is read before windows are listed
        WindowDataset(d, num_steps=2)


def test_view_and_export_stop_on_damage_in_one_line(tmp_path, capsys, ds):
    DAMAGE["shard-is-a-folder"][0](ds)
    before = snapshot(tmp_path)
    for args in (["data", "view", ds, "--out", tmp_path / "p.gif"], ["data", "export", ds, "--out", tmp_path / "lr"]):
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err, "episode_000001.sep")
    assert snapshot(tmp_path) == before and not (tmp_path / "lr").exists() and not (tmp_path / "p.gif").exists()


def test_repair_cleans_leftovers_then_verify_passes(tmp_path, capsys, ds):
    for case in ("leftover-partial-folder", "leftover-tmp-in-root", "leftover-torn-line"):
        DAMAGE[case][0](ds)
    code, out, _ = run_cli(capsys, "data", "verify", ds, "--repair")
    assert code == 0, out
    assert not list(tmp_path.glob(".ds.partial-*")) and not (ds / ".tmp-info.json").exists()
    assert run_cli(capsys, "data", "verify", ds)[0] == 0


# ---- hypothesis: any value in any manifest field or info.json field -----------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
FIELDS = ["index", "file", "length", "nbytes", "checksum", "seed", "env_id", "policy", "ret", "terminated",
          "truncated", "has_actions", "source", "extra"]  # fmt: skip
MUST_FAIL = {"file", "length", "nbytes", "checksum", "has_actions"}
REQUIRED = {"index", "file", "length", "nbytes", "checksum"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "ds"
    make_synthetic(root, lengths=(6, 5, 4), frame=16, block_frames=4)
    return root


def _fresh(pristine: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(pristine, root)
    return root


@HYPO
@given(line=st.integers(0, 2), field=st.sampled_from(FIELDS), value=JSON, drop=st.booleans())
def test_any_manifest_field_value_is_caught_or_harmless(pristine, tmp_path, capsys, line, field, value, drop):
    root = _fresh(pristine, tmp_path, "h")
    lines = _lines(root)
    original = lines[line].get(field)
    if drop:
        lines[line].pop(field)
    else:
        lines[line][field] = value
    _write_lines(root, lines)
    before = snapshot(root)
    code, out, err = run_cli(capsys, "data", "verify", root)
    assert snapshot(root) == before
    changed = value != original or type(value) is not type(original)
    must_fail = (drop and field in REQUIRED) or (not drop and field in MUST_FAIL and changed)
    if must_fail or code:
        assert_one_line_error(code, err)
    else:
        assert err == "" and "everything checks out" in out


INFO_FIELDS = ["format", "format_version", "frame_shape", "block_frames", "fps", "action_space"]


@HYPO
@given(field=st.sampled_from(INFO_FIELDS), value=JSON, drop=st.booleans())
def test_any_info_field_value_is_caught_or_harmless(pristine, tmp_path, capsys, field, value, drop):
    root = _fresh(pristine, tmp_path, "i")
    info = json.loads((root / INFO).read_text())
    original = info.get(field)
    _edit_info(root, **{field: _DROP if drop else value})
    before = snapshot(root)
    for verb in ("verify", "info"):
        code, out, err = run_cli(capsys, "data", verb, root)
        assert snapshot(root) == before
        if code:
            assert_one_line_error(code, err)
        changed = drop or value != original or type(value) is not type(original)
        if verb == "verify" and field in ("format", "format_version", "frame_shape", "block_frames") and changed:
            assert_one_line_error(code, err)


# ---- 4. importers: corrupt files become one line naming the file; nothing is imported -----------------------
def _lerobot(tmp_path: Path, video: bool = False) -> Path:
    src = tmp_path / "src"
    make_synthetic(src, lengths=(4, 3), frame=16, block_frames=4)
    EXPORTERS["lerobot"](Dataset.open(src), str(tmp_path / "lr"), video=video)
    shutil.rmtree(src)
    return tmp_path / "lr"


def _map_images(lr: Path, fn) -> None:
    path = lr / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    images = [fn(k, item) for k, item in enumerate(table.column("observation.image").to_pylist())]
    col = table.schema.get_field_index("observation.image")
    table = table.set_column(col, table.schema.field(col), pa.array(images, table.schema.field(col).type))
    pq.write_table(table, path)


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _write_mp4(path: Path, n: int = 5, size: int = 16) -> None:
    gen = imageio_ffmpeg.write_frames(str(path), (size, size), fps=10, codec="libx264", macro_block_size=1,
                                      ffmpeg_log_level="error")  # fmt: skip
    gen.send(None)
    for t in range(n):
        gen.send(np.full((size, size, 3), 20 * t, np.uint8))
    gen.close()


def _minari(tmp_path: Path, name: str = "mn") -> Path:
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    meta = {"total_episodes": 1, "data_format": "hdf5", "action_space": json.dumps({"type": "Discrete", "n": 3})}
    (root / "data/metadata.json").write_text(json.dumps(meta))
    with h5py.File(root / "data/main_data.hdf5", "w") as f:
        ep = f.create_group("episode_0")
        ep.attrs["id"], ep.attrs["seed"] = 0, 3
        ep["observations"] = np.zeros((5, 16, 16, 3), np.uint8)
        ep["actions"] = np.array([0, 1, 2, 1])
        ep["rewards"] = np.zeros(4)
        ep["terminations"] = np.array([False, False, False, True])
        ep["truncations"] = np.zeros(4, bool)
    return root


def _videos(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_mp4(folder / "a.mp4")
    np.save(folder / "a.actions.npy", np.array([0, 1, 0, 1]))
    return folder


def _corrupt_png(lr):
    _map_images(lr, lambda k, item: {"bytes": b"\x89PNG\r\n\x1a\n garbage" if k == 2 else item["bytes"], "path": None})


def _truncated_png(lr):
    _map_images(lr, lambda k, item: {"bytes": item["bytes"][: len(item["bytes"]) // 2], "path": None})


IMPORT_DAMAGE = {
    "lerobot-corrupt-png": ("lerobot", _lerobot, _corrupt_png, ["file-000.parquet episode 0"]),
    "lerobot-truncated-png": ("lerobot", _lerobot, _truncated_png, ["file-000.parquet episode 0"]),
    "lerobot-image-not-struct": (
        "lerobot", _lerobot, lambda lr: _map_images(lr, lambda k, item: {"bytes": None, "path": None}),
        ["neither bytes nor a path"],
    ),
    "lerobot-corrupt-parquet": (
        "lerobot", _lerobot, lambda lr: (lr / "data/chunk-000/file-000.parquet").write_bytes(b"PAR1 not really PAR1"),
        ["file-000.parquet"],
    ),
    "lerobot-empty-parquet": (
        "lerobot", _lerobot, lambda lr: (lr / "data/chunk-000/file-000.parquet").write_bytes(b""), ["file-000.parquet"],
    ),
    "lerobot-corrupt-episodes-table": (
        "lerobot", _lerobot, lambda lr: (lr / "meta/episodes/chunk-000/file-000.parquet").write_bytes(b"junk"),
        ["meta/episodes/chunk-000/file-000.parquet"],
    ),
    "lerobot-info-not-json": ("lerobot", _lerobot, lambda lr: (lr / "meta/info.json").write_text("{"), ["info.json"]),
    "lerobot-features-list": (
        "lerobot", _lerobot, lambda lr: _edit_json(lr / "meta/info.json", features=[1]), ["info.json", "features"],
    ),
    "lerobot-fps-zero": ("lerobot", _lerobot, lambda lr: _edit_json(lr / "meta/info.json", fps=0), ["info.json", "fps"]),
    "lerobot-info-a-list": ("lerobot", _lerobot, lambda lr: (lr / "meta/info.json").write_text("[]"), ["info.json"]),
    "lerobot-stats-corrupt": (
        "lerobot", lambda t: _lerobot_foreign(t), lambda lr: (lr / "meta/stats.json").write_text("{"), ["stats.json"],
    ),
    "lerobot-stats-not-numbers": (
        "lerobot", lambda t: _lerobot_foreign(t),
        lambda lr: (lr / "meta/stats.json").write_text('{"action": {"min": ["a"], "max": [1]}}'), ["stats.json"],
    ),
    "lerobot-corrupt-mp4": (
        "lerobot", lambda t: _lerobot(t, video=True),
        lambda lr: (lr / "videos/observation.image/chunk-000/file-000.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 junk"),
        ["file-000.mp4"],
    ),
    "lerobot-video-path-template": (
        "lerobot", lambda t: _lerobot(t, video=True),
        lambda lr: _edit_json(lr / "meta/info.json", video_path="videos/{nope}/x.mp4"), ["info.json", "video_path"],
    ),
    "minari-corrupt-hdf5": ("minari", _minari, lambda r: (r / "data/main_data.hdf5").write_bytes(b"\x89HDF junk"), ["main_data.hdf5"]),
    "minari-metadata-not-json": ("minari", _minari, lambda r: (r / "data/metadata.json").write_text("{"), ["metadata.json"]),
    "minari-bad-episode-name": ("minari", _minari, lambda r: _h5(r, lambda f: f.move("episode_0", "episode_x")), ["episode_x"]),
    "minari-missing-rewards": ("minari", _minari, lambda r: _h5(r, lambda f: f["episode_0"].pop("rewards")), ["rewards"]),
    "videos-corrupt-mp4": ("videos", _videos, lambda d: (d / "a.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 junk"), ["a.mp4"]),
    "videos-empty-npy": ("videos", _videos, lambda d: (d / "a.actions.npy").write_bytes(b""), ["a.actions.npy"]),
    "videos-corrupt-npy": ("videos", _videos, lambda d: (d / "a.actions.npy").write_bytes(b"\x93NUMPY junk"), ["a.actions.npy"]),
    "videos-ragged-json": (
        "videos", _videos,
        lambda d: ((d / "a.actions.npy").unlink(), (d / "a.actions.json").write_text("[[1], [1, 2], 3, 4]")),
        ["a.actions.json"],
    ),
    "videos-bad-space": ("videos", _videos, lambda d: (d / "action_space.json").write_text('"discrete"'), ["action_space.json"]),
}  # fmt: skip


def _lerobot_foreign(tmp_path: Path) -> Path:
    """Box actions and no simulacra extras: the importer infers the space from the actions and stats.json."""
    src = tmp_path / "src"
    make_synthetic(src, lengths=(4, 3), frame=16, block_frames=4, discrete=False)
    EXPORTERS["lerobot"](Dataset.open(src), str(tmp_path / "lr"))
    shutil.rmtree(src)
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    info.pop("simulacra")
    (tmp_path / "lr/meta/info.json").write_text(json.dumps(info))
    return tmp_path / "lr"


def _edit_json(path: Path, **fields) -> None:
    d = json.loads(path.read_text())
    d.update(fields)
    path.write_text(json.dumps(d))


def _h5(root: Path, fn) -> None:
    with h5py.File(root / "data/main_data.hdf5", "a") as f:
        fn(f)


@pytest.mark.parametrize("case", list(IMPORT_DAMAGE))
def test_corrupt_import_sources_are_one_line_naming_the_file(tmp_path, capsys, case):
    fmt, make, damage, names = IMPORT_DAMAGE[case]
    src = make(tmp_path)
    damage(src)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "import", src, "--format", fmt, "--out", tmp_path / "out")
    assert_one_line_error(code, err, *names)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_each_import_source_is_fine_before_it_is_damaged(tmp_path, capsys):
    """The control for the table above: undamaged, every source imports."""
    for fmt, make in (("lerobot", _lerobot), ("lerobot", lambda t: _lerobot(t, True)), ("minari", _minari),
                      ("videos", _videos)):  # fmt: skip
        base = tmp_path / f"{fmt}-{len(list(tmp_path.iterdir()))}"
        base.mkdir()
        code, _, err = run_cli(capsys, "data", "import", make(base), "--format", fmt, "--out", base / "out")
        assert code == 0, err
        assert Dataset.open(base / "out").verify()["ok"]


@HYPO_IMPORT
@given(path=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30) | st.sampled_from(["../secret.png", "/etc/passwd", "..\\x.png",
                                                                "a/../../secret.png", "C:/x.png", "file:///etc/passwd"]))  # fmt: skip
def test_lerobot_image_paths_never_leave_the_source(tmp_path_factory, capsys, path):
    tmp = tmp_path_factory.mktemp("img")
    lr = _lerobot(tmp)
    _map_images(lr, lambda k, item: {"bytes": None, "path": path})
    secret = tmp / "secret.png"
    secret.write_bytes(_png(np.full((16, 16, 3), 200, np.uint8)))
    os.utime(secret, (1, secret.stat().st_mtime))
    code, _, err = run_cli(capsys, "data", "import", lr, "--out", tmp / "out")
    assert_one_line_error(code, err)
    assert secret.stat().st_atime == 1 and not (tmp / "out").exists()
