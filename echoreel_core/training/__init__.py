"""Training the Action Prism and the integration layers on (target, reference) video pairs, the
base model frozen: the configuration, the data and its caches, the loop and its parts (one step,
checkpoints, the log, validation videos), processes and what they agree on, the memory estimate.

May import: common, models, loading, sampling, echoreel, pipelines, video_io.
"""
