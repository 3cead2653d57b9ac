"""Speed and accuracy of every engine side by side, on the machine at hand: ``python -m benchmarks.run --help``."""
