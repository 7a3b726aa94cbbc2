"""Accuracy on the real benchmarks (GQA, MMBench, MME, POPE, ScienceQA-IMG, VQAv2, TextVQA, SEED-Bench)
from their published Parquet: `tasks` (one spec per benchmark), `metrics` (pure scoring functions),
`data` (reading the Parquet, local or s3://), `run` (the driver behind `restore bench accuracy --suite real`).
"""
