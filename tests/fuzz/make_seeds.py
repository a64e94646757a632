#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_api into tests/fuzz/corpus/.

The problem: libFuzzer starts faster from inputs that already reach every
operation.  fuzz_api reads its input with FuzzedDataProvider, which takes
every integer from the END of the input, one byte per value for the small
ranges used here (the value is the byte modulo the range's size).  So a
seed is written as the list of bytes in the order they are consumed, then
reversed: the mode byte (0 modulo 4: two threads), two bytes of counter
batch, then operation bytes (modulo the operation count) each followed by
argument bytes.  Seeds `op-NN` start with operation NN; `mix-N` are random
programs.  Deterministic (fixed random seed); rerun after adding operations.
"""
import os
import random
import sys

OPERATIONS = 26  # fuzz_api.cpp's op::count
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus")
rng = random.Random(20261128)


def write(name, consumed):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes(reversed(consumed)))


def operation(op):
    return [op] + [rng.randrange(256) for _ in range(rng.randrange(2, 6))]


def main():
    os.makedirs(out, exist_ok=True)
    for op in range(OPERATIONS):
        program = [1, 0, rng.randrange(1, 255)]  # one thread, a small batch
        for _ in range(6):
            program += operation(op)
        write(f"op-{op:02d}", program)
    for n in range(12):
        two_threads = n % 3 == 0
        program = [0 if two_threads else 1, rng.randrange(2), rng.randrange(256)]
        for _ in range(rng.randrange(16, 96)):
            program += operation(rng.randrange(OPERATIONS))
        write(f"mix-{n:02d}", program)
    return 0


if __name__ == "__main__":
    sys.exit(main())
