"""Input pipeline: sources of images (`sources`) and the batches the trainer consumes (`pipeline`)."""

from resnet_jax.data.pipeline import Normalizer, TrainBatches, eval_batches
from resnet_jax.data.sources import ArraySplit, load_split
from resnet_jax.errors import DatasetNotPrepared

__all__ = ["ArraySplit", "DatasetNotPrepared", "Normalizer", "TrainBatches", "eval_batches", "load_split"]
