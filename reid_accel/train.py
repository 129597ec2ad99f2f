"""`python -m reid_accel.train CONFIG [...]`, the module `accelerate launch -m` starts on every process.

The same code path as `reid-accel train`: arguments, config loading and error reporting all live in the CLI.
"""

import sys

from reid_accel.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
