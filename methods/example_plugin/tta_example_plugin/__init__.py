"""Example tta plugin package: ``pip install -e methods/example_plugin`` adds the method ``ema_bn``."""
