"""The bottom layer, below `configs` and `sde_lib`: what every package needs and nothing in it
knows about SDEs, networks or commands.

  * `sde_base.fileio`: the one atomic writer (temporary file, fsync, rename, fsync of the
    folder), valid-JSON writers, clean-up of dead writers' temporary files, and the one-writer
    lock of a folder (`WorkdirLock`).
  * `sde_base.values`: the parsers of one value (`positive_int`, `count`, `positive_float`) that
    flags and sampler options share, with one message each.
  * `sde_base.registry`: the one `Registry` class behind every name lookup (SDEs, models,
    objectives, samplers, predictors, correctors, grids, commands).
"""
