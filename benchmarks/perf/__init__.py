"""Performance benchmarks of the suite itself (`make bench`).

One module per benchmark, each runnable as `python -m benchmarks.perf.<name> [--out DIR] [--quick]`; each prints a
table and writes `<name>.json` and `<name>.md` into the output folder (default `benchmarks/perf/results/`):

  train_step  one SGD step of LoRITa (factors 2, 3; activation / weight / auto) relative to dense
  data_path   images/s of the in-memory batched pipeline versus a torchvision DataLoader
  planning    singular values, plan_ranks (first and cached) and fvcore counting times
  inference   measured versus FLOPs speed-up of LoRITa-factorized and pruned models at equal FLOPs drop
  all         the four in sequence, plus one combined `perf.md` headed with the machine it ran on
  rank_search rank_policy threshold against greedy on a sweep's trained LoRITa models (it runs their fine-tuning
              runs, so it is no part of `all`; --quick is a smoke run on a tiny model)

`gpu_check.sh` runs train_step and inference on a GPU in a few minutes.
"""
