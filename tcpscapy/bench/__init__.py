"""`make bench`: figures measured several times, printed as a table and kept in BENCHMARKS.md.

A figure is a function returning one sample (a float in its unit); the runner
repeats it and reports the median with min and max. Benchmarks never assert.
"""
