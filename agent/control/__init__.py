"""Closed-loop control: a TFLite policy inside a safety envelope, with a PID fallback.

Pure core: `settings` (the `control:` YAML section), `policy` (model card, feature
assembly, TFLite interpreter), `safety` (envelope, interlock reasons), `pid`, `loop` (one
period as a pure function). Commissioning (`edgeloop commission`, on the box, no
TensorFlow): `plant_test`, `ident`, `mpc` (the expert), `mlp` + `learn` (DAgger),
`tflite_writer`, `validate`. Thin I/O shell: `runner.ControlRunner`.  See docs/control.md.
Nothing is imported here, so `edgeloop check` does not pay for TFLite.
"""
