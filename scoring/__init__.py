"""The benchmarks other than Occ3D-nuScenes, one module each, called by `evaluate.py --benchmark NAME`.

Each module has a docstring that is its help text and `main(argv)` (the command line without
--benchmark) returning the metrics dict it prints and writes with --out. The metric definitions
live in the library (occ/metrics.py); these modules read the files of their benchmark and report.
What every scorer shares (evaluate.py included: the split's records, prediction files, the
checkpoint's model with its benchmark check, the JSON metrics) is in scoring/common.py.
"""
