"""Checkpoints: kill -9 and resume equals an uninterrupted run; crashes mid-write; wrong model refused."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_tiny import build_rag, loaders, tiny_config, trainable_state

from contextflow_core.config import TrainConfig
from contextflow_core.training import checkpoint as ckpt
from contextflow_core.training import train_rag

SCRIPT = Path(__file__).with_name("train_tiny.py")
ROOT = SCRIPT.parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """The subprocess runs on one thread; matching it makes the runs agree to the bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spawn(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _uninterrupted(**overrides):
    model = build_rag()
    train_rag(model, loaders()[0], config=tiny_config(None, **overrides))
    return trainable_state(model)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path, one_thread):
    out = tmp_path / "run"
    proc = _spawn("--output-dir", out, "--save-steps", 3, "--delay", 0.1)
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(out):
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = ckpt.list_checkpoints(out)
    assert done and ckpt.checkpoint_name(12) not in [p.name for p in done]  # killed mid-run

    model = build_rag()
    history = train_rag(model, loaders()[0], config=tiny_config(out, save_steps=3, resume="auto"))
    assert history.resumed_from == str(done[-1]) and history.global_step == 12
    _assert_same(trainable_state(model), _uninterrupted())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # lines logged after the checkpoint by the killed run were dropped


def test_crash_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, one_thread):
    out = tmp_path / "run"
    proc = _spawn("--output-dir", out, "--save-steps", 2, "--crash-on-save", 2)
    assert proc.wait(timeout=120) == 3, proc.stderr.read().decode()[-2000:]
    assert [p.name for p in ckpt.list_checkpoints(out)] == [ckpt.checkpoint_name(2)]
    assert list(out.glob(".checkpoint-*")), "the interrupted write should have left its temp folder"
    model = build_rag()
    history = train_rag(model, loaders()[0], config=tiny_config(out, save_steps=2, resume="auto"))
    assert history.resumed_from.endswith(ckpt.checkpoint_name(2))
    assert not list(out.glob(".checkpoint-*"))  # stale temp folders are cleaned on start
    _assert_same(trainable_state(model), _uninterrupted())


def test_checkpoint_of_another_model_is_refused(tmp_path):
    train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, max_steps=1))
    other = build_rag(hidden=16)
    with pytest.raises(ValueError, match="written for another model.*shape differs"):
        train_rag(other, loaders()[0], config=tiny_config(tmp_path, resume="auto"))
    lora = build_rag()
    with pytest.raises(ValueError, match="written for another model.*only in"):
        train_rag(lora, loaders()[0], config=tiny_config(tmp_path, resume="auto", generator_lora=True, lora_r=2))
    assert lora.config.freeze_retriever is False  # the model's flags are restored after the failure


def test_tampered_checkpoint_is_refused(tmp_path):
    train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, max_steps=1))
    path = ckpt.latest_checkpoint(tmp_path) / "optimizer.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch for .*optimizer.safetensors"):
        train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, resume="auto"))


def test_keeps_the_last_n_checkpoints_and_resumes_a_finished_run_instantly(tmp_path):
    model = build_rag()
    train_rag(model, loaders()[0], config=tiny_config(tmp_path, save_steps=1, save_total_limit=2))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(11), ckpt.checkpoint_name(12)]
    before = trainable_state(model)
    again = train_rag(model, loaders()[0], config=tiny_config(tmp_path, save_steps=1, resume="auto"))
    assert again.global_step == 12 and again.stop_reason == "completed"
    _assert_same(trainable_state(model), before)


def test_files_hold_no_pickle_and_round_trip_the_optimizer(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(2):
        net(torch.ones(1, 3)).sum().backward()
        opt.step(), sched.step(), opt.zero_grad()
    state = {"global_step": 2}
    ckpt.save_checkpoint(tmp_path / "c", model=net, optimizer=opt, scheduler=sched, trainer_state=state,
                         rng_states=[ckpt.capture_rng_state()])
    for f in (tmp_path / "c").iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"
    expected = torch.rand(3)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    assert ckpt.load_checkpoint(tmp_path / "c", model=net2, optimizer=opt2, scheduler=sched2) == state
    assert torch.equal(torch.rand(3), expected)  # RNG restored to the saved state
    for a, b in ((opt, opt2), (sched, sched2)):
        assert str(a.state_dict()) == str(b.state_dict())
    for o, n in ((opt, net), (opt2, net2)):
        n(torch.ones(1, 3)).sum().backward()
        o.step()
    assert torch.equal(net.weight, net2.weight)


def test_resume_path_that_does_not_exist_is_an_error(tmp_path):
    config = tiny_config(tmp_path, resume=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="resume: expected a checkpoint folder"):
        train_rag(build_rag(), loaders()[0], config=config)
    assert isinstance(config, TrainConfig)
