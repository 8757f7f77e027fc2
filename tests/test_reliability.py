"""Faults during training and what the next run sees: kills at the dangerous moments of a checkpoint save
and of the model folder swap, a damaged or malicious checkpoint, two writers, Ctrl-C, umask, reruns.

Each fault is injected where it hurts (a child process killed with ``os._exit`` inside the rename that
publishes a file, or the rename patched to fail) and the test checks what a rerun does.
"""

import errno
import io
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import flowlm
from flowlm.cli import main
from flowlm.errors import CheckpointError, ConfigError
from flowlm.training.checkpoint import atomic_write_dir, resolve_model_dir
from flowlm.training.lock import RunLock
from flowlm.training.state import LAST, PREV, load_state, newest_readable, recover_partials, save_state

TEXT = "\n\n".join(f"the cat {i % 7} sat on the mat {i % 5} and looked at the dog {i % 3}." for i in range(400))
OVERRIDES = [
    "data.seq_len=24", "model.hidden_size=16", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=8",
    "train.batch_size=4", "train.log_every=1", "train.ckpt_every=2", "train.val_every=100", "train.warmup_steps=2",
]  # fmt: skip
SRC = str(Path(flowlm.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    (root / "corpus.txt").write_text(TEXT)
    overrides = [*OVERRIDES, f"data.cache_dir={root / 'cache'}"]
    straight = root / "straight"
    flowlm.train(overrides=overrides, data=str(root / "corpus.txt"), tokenizer="char", steps=4, out=straight,
                 progress=False)  # fmt: skip
    return root, overrides


def train(setup, out, steps, **kwargs):
    root, overrides = setup
    return flowlm.train(overrides=overrides, data=str(root / "corpus.txt"), tokenizer="char", steps=steps, out=out,
                        progress=False, **kwargs)  # fmt: skip


def cli_args(setup, out, steps):
    root, overrides = setup
    return ["train", "--data", str(root / "corpus.txt"), "--tokenizer", "char", "--quiet", *overrides,
            "--steps", str(steps), "--out", str(out)]  # fmt: skip


def child(script: str, **popen) -> subprocess.Popen:
    """A Python child running ``script``, with SIGINT at its default disposition: a suite started from a
    background shell job (``nohup pytest ... &``) has SIGINT ignored, and the child would inherit that and
    never see the Ctrl-C these tests send."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    # the child trains on this process's intra-op thread count: its weights are compared bit for bit with runs
    # made here, and a thread count changes how reductions are split
    script = f"import torch; torch.set_num_threads({torch.get_num_threads()})\n" + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", script], env=env, preexec_fn=restore, **popen)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until the child ``proc`` has made ``path``; fail with its stderr if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def one_line_error(capsys, argv, *fragments, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("flowlm: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# --- 1. checkpoint saves: never without a complete checkpoint ------------------------------------------


@pytest.mark.parametrize("fail_at", [0, 1])
def test_a_failed_rename_always_leaves_a_readable_checkpoint(tmp_path, monkeypatch, fail_at):
    """Fail the first (last -> prev) or the second (partial -> last) rename of a save: a checkpoint remains."""
    save_state({"global_step": 1}, tmp_path)
    save_state({"global_step": 2}, tmp_path)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) - 1 == fail_at:
            raise OSError("injected")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(CheckpointError, match="injected"):  # one line for the user, naming the cause
        save_state({"global_step": 3}, tmp_path)
    monkeypatch.setattr(os, "replace", real)
    path, state = newest_readable(tmp_path)
    assert (path.name, state["global_step"]) == ((LAST, 2) if fail_at == 0 else (PREV, 2))
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize("kill_at", [1, 2])
def test_kill_during_checkpoint_publish_then_rerun_resumes_exactly(setup, tmp_path, kill_at):
    """A child training process is killed (os._exit, no cleanup) inside the rename that publishes a checkpoint:
    the step-2 one (the first save: no readable checkpoint is left, only the complete temporary file) or the step-4
    one (after last.ckpt became prev.ckpt). The rerun publishes the complete temporary file instead of deleting it
    and ends with the same weights as an uninterrupted run."""
    root, overrides = setup
    out, corpus = tmp_path / "run", root / "corpus.txt"
    proc = child(
        f"""
        import os, flowlm
        real, published = os.replace, []
        def replace(src, dst):  # saves: step 2 publishes last.ckpt; step 4 moves it to prev.ckpt, then publishes
            if str(dst).endswith("last.ckpt"):
                published.append(dst)
                if len(published) == {kill_at}:
                    os._exit(9)
            return real(src, dst)
        os.replace = replace
        flowlm.train(overrides={overrides!r}, data="{corpus}", tokenizer="char", steps=4,
                     out="{out}", progress=False)
        """,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.wait(timeout=300) == 9, proc.stderr.read().decode()[-2000:]
    ckpts = out / "checkpoints"
    assert not (ckpts / LAST).exists() and (ckpts / PREV).exists() == (kill_at == 2)
    assert list(ckpts.glob(".partial-*")), "the kill should leave the unpublished file behind"
    if kill_at == 1:
        train(setup, out, 4)  # resumes from the recovered step-2 file and trains steps 3 and 4
        assert (out / "logs" / "session-1").is_dir()
    else:  # the step-4 file is recovered: the run is complete, and its model (exported before the state) too
        with pytest.raises(ConfigError, match="already at step 4"):
            train(setup, out, 4)
    assert load_state(ckpts / LAST)["global_step"] == 4
    assert not list(ckpts.glob(".partial-*"))
    assert same_weights(out, root / "straight")


# --- 3. safe resume --------------------------------------------------------------------------------------


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_whatever_the_environment(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 1, "state_dict": {}, "payload": Evil(marker)}, out / "checkpoints" / LAST)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    one_line_error(capsys, cli_args(setup, out, 4), "refusing to load", "system", "last.ckpt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing"):
        load_state(out / "checkpoints" / LAST)
    assert not marker.exists()


# --- 4. damaged checkpoints ------------------------------------------------------------------------------


def test_damaged_last_falls_back_to_prev_and_both_damaged_names_no_resume(setup, tmp_path, capsys):
    root, _ = setup
    out = tmp_path / "run"
    shutil.copytree(root / "straight", out)
    ckpts = out / "checkpoints"
    assert load_state(ckpts / PREV)["global_step"] == 2
    (ckpts / LAST).write_bytes(b"")  # what a kill during a cross-filesystem copy used to leave
    warnings: list[str] = []
    path, state = newest_readable(ckpts, warn=warnings.append)
    assert path.name == PREV and state["global_step"] == 2
    assert "last.ckpt is damaged" in warnings[0] and "prev.ckpt (step 2)" in warnings[0]
    data = bytearray((ckpts / PREV).read_bytes())
    (ckpts / PREV).write_bytes(bytes(data[: len(data) // 2]))
    one_line_error(capsys, cli_args(setup, out, 6), "last.ckpt is damaged", "prev.ckpt is damaged", "--no-resume")
    assert main([*cli_args(setup, out, 2), "--no-resume"]) == 0
    assert load_state(ckpts / LAST)["global_step"] == 2
    assert not (ckpts / PREV).exists()  # the earlier run's state is gone, not kept as this run's fallback


def flip_a_tensor_bit(path: Path) -> None:
    """Flip one bit inside the data of a tensor record of the zip archive ``path`` (headers stay intact)."""
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    with open(path, "r+b") as f:
        f.seek(record.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(record.header_offset + 30 + name_len + extra_len + record.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_bit_in_a_tensor_is_caught_and_never_rotated_over_a_good_prev(tmp_path):
    """torch.load does not check the archive's CRC-32s, so a flipped bit inside a tensor loaded silently. Now the
    check catches it, resume falls back to prev.ckpt, and the next save replaces the damaged last.ckpt directly
    instead of rotating it over the readable prev.ckpt."""
    for step in (1, 2):
        save_state({"global_step": step, "w": torch.arange(64.0) * step}, tmp_path)
    torch.load(tmp_path / LAST, weights_only=True)  # a flip is invisible to torch ...
    flip_a_tensor_bit(tmp_path / LAST)
    assert not torch.equal(torch.load(tmp_path / LAST, weights_only=True)["w"], torch.arange(64.0) * 2)
    with pytest.raises(CheckpointError, match="CRC-32"):  # ... not to the check
        load_state(tmp_path / LAST)
    path, state = newest_readable(tmp_path, warn=lambda message: None)
    assert (path.name, state["global_step"]) == (PREV, 1)
    save_state({"global_step": 3, "w": torch.zeros(64)}, tmp_path)
    assert load_state(tmp_path / LAST)["global_step"] == 3 and load_state(tmp_path / PREV)["global_step"] == 1


def test_a_complete_temporary_file_is_recovered_and_broken_or_older_ones_deleted(tmp_path):
    """What a kill inside the publishing renames leaves: the complete temporary file is the newest state. The next
    run publishes it when nothing readable is newer, and deletes temporary files that are truncated or older."""
    folder = tmp_path
    save_state({"global_step": 5}, folder)
    (folder / LAST).write_bytes(b"PK\x03\x04 damaged")
    torch.save({"global_step": 7}, folder / ".partial-11-last.ckpt")
    torch.save({"global_step": 4}, folder / ".partial-12-last.ckpt")
    data = bytearray((folder / ".partial-11-last.ckpt").read_bytes())
    (folder / ".partial-13-last.ckpt").write_bytes(bytes(data[: len(data) // 2]))
    recover_partials(folder, warn=lambda message: None)
    assert load_state(folder / LAST)["global_step"] == 7
    assert not (folder / PREV).exists()  # the damaged last.ckpt was not rotated into prev.ckpt
    assert not list(folder.glob(".partial-*"))
    torch.save({"global_step": 6}, folder / ".partial-14-last.ckpt")  # older than last.ckpt: only deleted
    recover_partials(folder, warn=lambda message: None)
    assert load_state(folder / LAST)["global_step"] == 7 and not list(folder.glob(".partial-*"))


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_checkpoints(setup, tmp_path, monkeypatch, capsys):
    """ENOSPC raised inside torch's zip writer came out as a 60-line traceback ending in "unexpected pos"."""
    root, _ = setup
    out = tmp_path / "run"
    shutil.copytree(root / "straight", out)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    real = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, f):
            self.f, self.written = f, 0

        def writable(self):
            return True

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: FullDisk(real(fd, *args, **kwargs)))
    one_line_error(capsys, cli_args(setup, out, 6), "could not write the training state", "No space left",
                   "rerun the same command to resume")  # fmt: skip
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before


def test_resume_refuses_foreign_checkpoints_and_a_broken_environment_with_one_line(setup, tmp_path, monkeypatch,
                                                                                   capsys):  # fmt: skip
    """A last.ckpt of a model of another size or with a non-integer step; both TORCH_FORCE_* variables set (which
    used to be reported as two damaged checkpoints, with advice to discard a healthy run)."""
    root, _ = setup
    out = tmp_path / "run"
    shutil.copytree(root / "straight", out)
    ckpts = out / "checkpoints"
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "true")
    err = one_line_error(capsys, cli_args(setup, out, 6), "are both set", "unset one")
    assert "damaged" not in err and "--no-resume" not in err
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    state = load_state(ckpts / LAST)
    key = next(k for k, v in state["state_dict"].items() if v.dim() == 2)
    state["state_dict"][key] = torch.zeros(state["state_dict"][key].shape[0] * 2, state["state_dict"][key].shape[1])
    torch.save(state, ckpts / LAST)
    one_line_error(capsys, cli_args(setup, out, 6), "holds a model of another shape", key, "--no-resume")
    state = load_state(ckpts / PREV)
    state["global_step"] = 2.5
    torch.save(state, ckpts / LAST)
    (ckpts / PREV).unlink()
    one_line_error(capsys, cli_args(setup, out, 6), "global_step is 2.5, not a whole number", "--no-resume")


# --- 5. the model folder swap ----------------------------------------------------------------------------


def test_kill_between_model_renames_readers_recover_and_next_run_cleans(setup, tmp_path, monkeypatch):
    root, _ = setup
    out = tmp_path / "run"
    shutil.copytree(root / "straight", out)
    model = out / "model"
    before = load_file(str(model / "model.safetensors"))
    real = os.replace

    def crash_on_publish(src, dst):
        if Path(dst) == model and Path(src).name.startswith(".model."):
            raise KeyboardInterrupt  # the process dies between the two renames
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_publish)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(model, lambda tmp: shutil.copytree(model, tmp, dirs_exist_ok=True))
    monkeypatch.setattr(os, "replace", real)
    (out / ".model.abc123").mkdir()  # a temporary folder of an export killed earlier
    assert not model.exists() and (out / ".model.old").is_dir()
    assert resolve_model_dir(out) == out / ".model.old" == resolve_model_dir(model)
    loaded = flowlm.load(out)
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in before.items())
    train(setup, out, 6)
    assert sorted(p.name for p in out.glob("*model*")) == ["model"]
    assert json.loads((model / "flowlm.json").read_text())["step"] == 6


# --- 12. the umask ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_exported_model_honours_the_umask(setup, tmp_path, umask):
    root, _ = setup
    previous = os.umask(umask)
    try:
        target = atomic_write_dir(
            tmp_path / "model", lambda tmp: shutil.copytree(root / "straight" / "model", tmp, dirs_exist_ok=True)
        )
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((target / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((target / "tokenizer").stat().st_mode) == 0o777 & ~umask


# --- 13. rerunning a finished run ------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 4])
def test_rerun_at_or_below_the_reached_step_changes_nothing(setup, tmp_path, capsys, steps):
    root, _ = setup
    out = tmp_path / "run"
    shutil.copytree(root / "straight", out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    err = one_line_error(capsys, cli_args(setup, out, steps), "already at step 4", "nothing was trained or changed")
    assert "model written" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


# --- 2 and 11. one writer per run; Ctrl-C -----------------------------------------------------------------


def test_second_writer_is_refused_and_ctrl_c_exits_130_and_resumes(setup, tmp_path, capsys):
    """A child trains; a second training into the same folder is refused naming the child's pid; SIGINT stops
    the child with status 130 and our one line; the rerun resumes from its checkpoint."""
    root, overrides = setup
    out = tmp_path / "run"
    argv = cli_args(setup, out, 100_000)
    proc = child(
        f"import sys; from flowlm.cli import main; sys.exit(main({argv!r}))",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(out / "checkpoints" / LAST, proc)
        one_line_error(capsys, cli_args(setup, out, 8), f"pid {proc.pid} on", "another --out")
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert status == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("flowlm: interrupted at step ") and "rerun the same command to resume" in last, last
    saved = newest_readable(out / "checkpoints")[1]["global_step"]
    assert f"from the checkpoint of step {saved}" in last
    train(setup, out, saved + 2)  # the lock was released; the run goes on from the saved step
    assert load_state(out / "checkpoints" / LAST)["global_step"] == saved + 2


def test_ctrl_c_inside_a_checkpoint_save_finishes_the_save_and_exits_130(setup, tmp_path):
    """A Ctrl-C that lands while torch.save is writing: a KeyboardInterrupt raised there crosses torch's C++ zip
    writer and comes out as an unrelated RuntimeError (exit status 1, a traceback). The first Ctrl-C must instead
    let the save finish, stop after the step, save it, and exit 130 with our line."""
    out, marker = tmp_path / "run", tmp_path / "saving"
    argv = cli_args(setup, out, 100_000)
    proc = child(
        f"""
        import io, sys, time, torch
        from pathlib import Path
        marker, save = Path({str(marker)!r}), torch.save

        class SlowFile(io.RawIOBase):  # the third write of the first save waits 4 s: the Ctrl-C arrives then
            def __init__(self, f):
                self.f, self.calls = f, 0
            def writable(self):
                return True
            def write(self, data):
                self.calls += 1
                if self.calls == 3 and not marker.exists():
                    marker.touch()
                    time.sleep(4)
                return self.f.write(data)

        torch.save = lambda obj, f, *args, **kwargs: save(obj, SlowFile(f) if hasattr(f, "write") else f, *args,
                                                          **kwargs)
        from flowlm.cli import main
        sys.exit(main({argv!r}))
        """,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker, proc)
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert status == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    saved, state = newest_readable(out / "checkpoints")
    assert saved.name == LAST and state["global_step"] >= 2
    last = err.strip().splitlines()[-1]
    assert last == (f"flowlm: interrupted at step {state['global_step']}; rerun the same command to resume from "
                    f"the checkpoint of step {state['global_step']}"), last  # fmt: skip


def test_sigterm_saves_the_step_in_progress_exits_143_and_resumes_exactly(setup, tmp_path):
    """SIGTERM (docker stop, timeout, systemd, SLURM preemption) at whatever step the child has reached: it used to
    exit 0 without saving the step in progress. Now: the step is saved, the exit status is 143 (128 + 15) with our
    line, and the rerun continues to the same weights as a run that was never stopped."""
    out = tmp_path / "run"
    proc = child(
        f"import sys; from flowlm.cli import main; sys.exit(main({cli_args(setup, out, 100_000)!r}))",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(out / "checkpoints" / LAST, proc)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert status == 143, err[-3000:]
    step = load_state(out / "checkpoints" / LAST)["global_step"]
    assert err.strip().splitlines()[-1] == (f"flowlm: stopped by SIGTERM at step {step}; rerun the same command to "
                                            f"resume from the checkpoint of step {step}")  # fmt: skip
    train(setup, out, step + 3)
    train(setup, tmp_path / "straight", step + 3)
    assert same_weights(out, tmp_path / "straight")


def test_a_second_ctrl_c_during_the_final_save_waits_for_it_and_exits_130(setup, tmp_path):
    """The first Ctrl-C asks for a stop; the save of that step is slow, and a second Ctrl-C lands inside it (it used
    to give exit status 1 and torch's "unexpected pos" traceback). Now the save completes, then the process stops."""
    out, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    proc = child(
        f"""
        import io, sys, time, torch
        from pathlib import Path
        markers, save, saves = Path({str(markers)!r}), torch.save, []

        class SlowFile(io.RawIOBase):  # the third write of every save waits 3 s, after leaving a marker
            def __init__(self, f):
                self.f, self.calls = f, 0
                saves.append(self)
            def writable(self):
                return True
            def write(self, data):
                self.calls += 1
                if self.calls == 3:
                    (markers / f"save-{{len(saves)}}").touch()
                    time.sleep(3)
                return self.f.write(data)

        torch.save = lambda obj, f, *args, **kwargs: save(obj, SlowFile(f) if hasattr(f, "write") else f, *args,
                                                          **kwargs)
        from flowlm.cli import main
        sys.exit(main({cli_args(setup, out, 100_000)!r}))
        """,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(out / "checkpoints" / LAST, proc)  # the first save is complete
        proc.send_signal(signal.SIGINT)  # a request to stop after the step in progress
        wait_for(markers / "save-2", proc)  # the save of that step
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert status == 130 and "Traceback" not in err and "unexpected pos" not in err, err[-3000:]
    assert not list((out / "checkpoints").glob(".partial-*"))
    step = load_state(out / "checkpoints" / LAST)["global_step"]
    assert err.strip().splitlines()[-1] == (f"flowlm: interrupted at step {step}; rerun the same command to resume "
                                            f"from the checkpoint of step {step}")  # fmt: skip


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    proc = child(
        f"""
        import time
        from flowlm.training.lock import RunLock
        RunLock("{tmp_path}").acquire()
        print("locked", flush=True)
        time.sleep(120)
        """,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {proc.pid} on .*another --out"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
    proc.wait(timeout=30)
    with RunLock(tmp_path) as lock:
        assert str(os.getpid()) in lock.holder()
