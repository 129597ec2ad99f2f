"""Random streams keyed by what they are for, never by which process draws them.

Every random draw of training (the epoch's order, a step's augmentations, a mixup weight) comes from a generator
seeded by a stable hash of its keys: (seed, epoch, step, ...). The same key gives the same numbers in every
process, after a resume, and whatever the number of processes, so the recipe, not the hardware, decides the run.
"""

import hashlib

import torch


def stream_seed(*keys: object) -> int:
    """A 63-bit seed from a stable hash of `keys` (unlike `hash()`, the same in every process and run)."""
    digest = hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(*keys: object) -> torch.Generator:
    """A CPU torch generator seeded by `keys`: CPU draws are bit-identical on every machine and device."""
    return torch.Generator().manual_seed(stream_seed(*keys))
