"""EchoReel: the Action Prism, the Action Integration layers attached to a UNet, their weights
(ours and the official file's), the action features a reference gives, and what controls and
reports the injection.

May import: common, models, loading, sampling.
"""
