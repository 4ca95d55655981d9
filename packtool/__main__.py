"""``python -m packtool``: the command line (same as the ``packtool`` console script)."""


def _run() -> None:
    # The library never imports the CLI; this entry point is the one exception, kept local so
    # that importing packtool.__main__ by accident costs nothing.
    from packtool.cli.main import main

    main(prog_name="packtool")


if __name__ == "__main__":
    _run()
