"""The composition root: the `apiinone` command (cli.py) and `apiinone run` (launcher.py).

The one package that may import every role (gateway, worker, shared); none of them imports it.
"""
