"""A re-ID dataset already in `datasets`' form: a folder written by `DatasetDict.save_to_disk`.

Such a folder holds splits train, query and gallery with columns image, pid, camid (0-based) and path, as
`load_benchmark` returns them, usually with the images embedded: a benchmark loaded here and saved, or a dataset
pulled from the Hub and saved (`load_dataset("USER/NAME").save_to_disk(FOLDER)`). Pixels are read from the stored
image bytes, so the original image folder need not exist any more. Nothing is parsed or cached: the folder is
memory-mapped as it is.

Official statistics: none.
"""

from reid_accel.data.records import Benchmark

BENCHMARK = Benchmark(title="saved re-ID dataset", parse=None)  # read by `load_benchmark` as it is, never parsed
