"""Room ``perf``, the top floor: measuring the package. Speed and memory of the stages and the pipeline
(``bench``), the GPU acceptance run (``gpu_check``, reading runs through ``measure``), the memory and FLOPs a
paper-scale run needs (``gpu_estimate``), the feature cache's measured speed-up (``cache_speedup``).

May import every room; it drives commands through ``cli``.
"""
