"""Making the files the toolkit reads: synthetic archives, the embedded default dataset, converters.

Nothing here is on cnm-run's path; training, the demo, the tests and the benchmarks use it to make
data, and users to bring their own features into the archive layout.
"""
