"""The bodies of the commands, one module each with a ``run`` function, imported only when its
command runs (:func:`packtool.cli.main.dispatch`): each command loads what it uses and no more, and
``--help``, ``--version`` and usage errors load none of them."""
