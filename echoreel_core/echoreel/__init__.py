"""EchoReel: the Action Prism, the Action Integration layers, their weights and action features."""
