"""``--model-replicas``: several model workers on one device sharing one copy of the weights, each
feeding it from its own thread (on a GPU: its own CUDA stream and pinned staging buffer)."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

import mmpipe
from mmpipe.cli import main
from mmpipe.models import load_embedder
from mmpipe.models.device_feed import DeviceFeed
from mmpipe.stage import DeviceSetups, SharedSetup
from tests.conftest import assert_same_rows, by_id, photo


def test_replicas_share_one_model_and_give_the_same_vectors(image_dir, tiny_model_spec, tmp_path):
    one = mmpipe.embed(str(image_dir), str(tmp_path / "one"), model=tiny_model_spec, batch_size=2,
                       progress=False)
    two = mmpipe.embed(str(image_dir), str(tmp_path / "two"), model=tiny_model_spec, batch_size=2,
                       model_replicas=2, progress=False)
    assert (two.ok, two.errors) == (one.ok, one.errors)
    embed = next(s for s in two.stats.stages if s.name == "embed")
    assert embed.concurrency == 2 and embed.batches >= 2
    assert_same_rows(by_id(two.out), by_id(one.out))


def test_shared_setup_builds_once_per_process():
    built = []

    def setup():
        built.append(object())
        return built[-1]

    shared = SharedSetup(setup)
    got = []
    threads = [threading.Thread(target=lambda: got.append(shared())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(g is built[0] for g in got)
    # What a Ray actor receives: the recipe, not the built object, so each process builds its own.
    shipped = pickle.loads(pickle.dumps(SharedSetup(len)))
    assert shipped.setup is len and shipped._built is None


def test_concurrent_callers_of_one_embedder_get_their_own_results(tiny_model_spec):
    clip = load_embedder(tiny_model_spec)
    embedder = clip.make_embedder()
    batches = [[clip.preprocessor.image(photo(seed + i)) for i in range(3)] for seed in range(0, 24, 3)]
    want = [embedder.embed_images(np.stack(b)) for b in batches]
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, embedder.embed_images(batches[i])))
               for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[i], w, atol=1e-6)


def test_the_cpu_feed_stacks_plainly():
    feed = DeviceFeed(torch.device("cpu"))
    arrays = [np.full((3, 4, 4), i, np.uint8) for i in range(5)]
    np.testing.assert_array_equal(feed.stack(arrays), np.stack(arrays))
    with feed.stream():
        pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_each_thread_feeds_the_gpu_from_its_own_pinned_buffer_and_stream():
    feed = DeviceFeed(torch.device("cuda"))
    seen = {}

    def use(i):
        out = feed.stack([np.full((3, 8, 8), i, np.uint8)] * 2)
        assert torch.from_numpy(out).is_pinned()
        with feed.stream():
            seen[i] = (out.ctypes.data, torch.cuda.current_stream())
            assert int(torch.from_numpy(out).to("cuda", non_blocking=True).sum()) == i * 2 * 3 * 64

    threads = [threading.Thread(target=use, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]


@pytest.mark.parametrize("args", [["--model-replicas", "0"], ["--model-replicas", "2", "--pipeline-stages", "2"]])
def test_bad_replica_counts_are_one_line_exit_2(image_dir, tiny_model_spec, tmp_path, capsys, args):
    with pytest.raises(SystemExit) as caught:
        main(["embed", str(image_dir), "--out", str(tmp_path / "out"), "--model", tiny_model_spec, *args])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmpipe: error: --model-replicas"), lines


def _named(device: str):
    return lambda batch: [device] * len(batch)


def test_workers_take_the_devices_in_turn_and_share_one_build_per_device():
    setup = DeviceSetups(_named, ["cuda:0", "cuda:2"])
    fns = [setup() for _ in range(4)]  # two replicas on each of two GPUs
    assert [f(["x"])[0] for f in fns] == ["cuda:0", "cuda:2", "cuda:0", "cuda:2"]
    assert fns[0] is fns[2] and fns[1] is fns[3] and fns[0] is not fns[1]
    again = pickle.loads(pickle.dumps(setup))  # what a Ray actor gets: the recipe, counted afresh
    assert again()(["x"]) == ["cuda:0"] and again.devices == ["cuda:0", "cuda:2"]
