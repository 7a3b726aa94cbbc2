"""Everything Ray, built on `restore`: `media` (storage, decoding, URL fetching; shared), `rows` (the output
row), `batch` (Ray Data labeling), `serve` (the Ray Serve endpoint), `bench` (pipeline benchmarks).

`batch` and `serve` never import each other; nothing here imports `jobs`.
"""
