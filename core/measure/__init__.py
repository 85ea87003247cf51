"""The measuring layer: what a model costs (``dynvlm cost``) and how fast it trains (``dynvlm bench model``).

- :mod:`.cost`: prefill FLOPs per part, latency, KV-cache bytes and peak memory of any config.
- :mod:`.model_bench`: training-step time and memory at several frame counts.
"""
