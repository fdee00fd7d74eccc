"""Adapters shipped with desta-edge (package data: `desta-edge-tiny/` is the tiny preset's).

Each subdirectory is an official-layout checkpoint (config.json + model.safetensors, connector
weights only) with its MODEL_CARD.md; `runtime.presets` finds them next to the runtime package,
both in a source checkout (models/) and in an installed wheel (desta_edge/models/).
"""
