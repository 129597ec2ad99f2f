"""Data layer: benchmark parsers, their cached `datasets` form, image pipelines, torch datasets and the sampler.

The path of an image: a parser in `benchmarks/` maps file names to records sorted by path (row index = memory
slot), `hf.load_benchmark` caches them as a `DatasetDict`, `torch_datasets` decodes and transforms images, and
`samplers.CrossDomainBatchSampler` draws [source | target] batches (`ProxyBatchSampler`: P proxies x K
images for clustering methods).
"""

from reid_accel.data.benchmarks import BENCHMARKS, official_stats
from reid_accel.data.hf import PARSER_VERSION, dataset_stats, decode_image, load_benchmark, verify_images
from reid_accel.data.records import ImageRecord, Split, SplitStats, compare_stats
from reid_accel.data.samplers import CrossDomainBatchSampler, ProxyBatchSampler
from reid_accel.data.torch_datasets import CrossDomainDataset, ReIDImageDataset
from reid_accel.data.transforms import BatchAugmentation, build_transform

__all__ = [
    "BENCHMARKS",
    "BatchAugmentation",
    "PARSER_VERSION",
    "CrossDomainBatchSampler",
    "CrossDomainDataset",
    "ImageRecord",
    "ProxyBatchSampler",
    "ReIDImageDataset",
    "Split",
    "SplitStats",
    "build_transform",
    "compare_stats",
    "dataset_stats",
    "decode_image",
    "load_benchmark",
    "official_stats",
    "verify_images",
]
