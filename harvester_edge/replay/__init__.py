"""Offline replay: record a run's outside contacts into a JSONL trace, replay it with a virtual clock, and simulate
a site at scale against synthetic batch, central and pilot behaviour.

- `recorder.Recording.start(path, config, store, clock)`: wrappers of the seams given to `site.build_site`
  (the daemon's `--record`, the simulation's `record=`)
- `replayer.replay(path, adjust=None) -> ReplayReport` (`harvester-edge replay TRACE [--strict]`)
- `sim.Simulation` / `sim.scale_point` (`harvester-edge simulate`, scripts/bench/simulate)
- the trace format: `trace` (versioned JSONL, gzip transparent)
"""
