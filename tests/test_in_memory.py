"""The in-memory batches: deterministic, resumable, exact eval coverage, crops inside the image."""

import jax
import numpy as np
import pytest

from resnet_jax.data.in_memory import Normalizer, PadCropFlip, TrainBatches, eval_batches
from resnet_jax.data.sources import ArraySplit, load_split


def make_split(n=50, size=6, channels=1):
  images = np.arange(n * size * size * channels, dtype=np.int64).reshape(n, size, size, channels)
  images = (images % 251).astype(np.uint8)
  return ArraySplit(images, (np.arange(n) % 10).astype(np.int32))


def batches(split, batch=8, step=0, augment=PadCropFlip(2, flip=True), seed=3):
  return TrainBatches(split, batch, seed=seed, augment=augment, step=step)


def test_same_seed_same_batches_and_resume_gives_the_next_batch():
  split = make_split()
  straight = batches(split)
  drawn = [next(straight) for _ in range(9)]
  again = batches(split)
  for expected in drawn:
    got = next(again)
    np.testing.assert_array_equal(got["image"], expected["image"])
  resumed = batches(split, step=straight.step - 2)
  np.testing.assert_array_equal(next(resumed)["image"], drawn[-2]["image"])
  np.testing.assert_array_equal(next(resumed)["label"], drawn[-1]["label"])


def test_an_epoch_draws_each_example_at_most_once_and_epochs_differ():
  split = ArraySplit(np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1), np.zeros(50, np.int32))
  stream = batches(split, batch=8, augment=None)
  epochs = [np.concatenate([next(stream)["image"].ravel() for _ in range(6)]) for _ in range(2)]
  for seen in epochs:
    assert len(seen) == 48 and len(set(seen.tolist())) == 48
  assert not np.array_equal(epochs[0], epochs[1])


def test_global_batch_is_the_same_whatever_the_process_count(monkeypatch):
  split = make_split()
  whole = [next(batches(split, step=s)) for s in range(4)]
  for index in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    for s in range(4):
      part = next(batches(split, step=s))
      np.testing.assert_array_equal(part["image"], whole[s]["image"][4 * index:4 * index + 4])


def test_crops_lie_inside_the_padded_image_and_flips_happen_about_half_the_time():
  rng = np.random.default_rng(0)
  augment = PadCropFlip(pad=4, flip=True)
  draws = augment.draw(rng, 4000)
  assert draws[:, :2].min() >= 0 and draws[:, :2].max() <= 8
  assert 0.45 < draws[:, 2].mean() < 0.55
  image = np.arange(32 * 32, dtype=np.uint8).reshape(1, 32, 32, 1) % 200 + 1
  for top, left, flip in draws[:50]:
    out = augment.apply(image, np.array([[top, left, flip]]))[0, ..., 0]
    padded = np.pad(image[0, ..., 0], 4)
    expected = padded[top:top + 32, left:left + 32]
    np.testing.assert_array_equal(out, expected[:, ::-1] if flip else expected)


@pytest.mark.parametrize("batch", [7, 10, 64])
def test_eval_scores_every_example_exactly_once(batch):
  split = make_split(n=23)
  seen = []
  for b in eval_batches(split, batch):
    assert len(b["label"]) == batch and b["image"].shape[1] == 1  # one view
    seen += np.rint(b["image"][b["mask"] == 1][:, 0, 0, 0, 0]).tolist()
  assert sorted(seen) == sorted(split.images[:, 0, 0, 0].astype(np.float32).tolist())


def test_pixel_mean_normalisation_gives_a_zero_mean_data_set():
  split = make_split(n=40, size=4, channels=3)
  for fit in (Normalizer.pixel_mean, Normalizer.channel_mean_std):
    normalized = fit(split.images)(split.images)
    assert np.abs(normalized.mean((0, 1, 2))).max() < 1e-5
  pixel_mean = Normalizer.pixel_mean(split.images)(split.images)
  assert np.abs(pixel_mean.mean(0)).max() < 1e-5
  assert np.allclose(Normalizer.channel_mean_std(split.images)(split.images).std((0, 1, 2)), 1, atol=1e-4)


def test_bundled_mnist_is_real_digits_split_4000_1000():
  train, test = load_split("mnist_bundled", "mnist", "train"), load_split("mnist_bundled", "mnist", "test")
  assert (len(train), len(test)) == (4000, 1000)
  assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8
  assert sorted(np.unique(test.labels)) == list(range(10))
  assert train.images.max() == 255 and 0.05 < (train.images > 0).mean() < 0.4  # ink on paper


def test_unknown_source_and_unprepared_tfds_set_say_what_to_do(tmp_path):
  with pytest.raises(ValueError, match="unknown data source"):
    load_split("webdataset", "x", "train")
  from resnet_jax.errors import DatasetNotPrepared
  with pytest.raises(DatasetNotPrepared, match="python -m resnet_jax.data.prepare cifar10 --data_dir="):
    load_split("tfds", "cifar10", "train", str(tmp_path))
