"""Visualisation: heat-map colour scales and colour bars (:mod:`.heatmap`), overlays and figures
(:mod:`.figures`); used by inference, evaluation and the service."""
