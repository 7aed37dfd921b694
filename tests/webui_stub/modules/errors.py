"""Stand-in for ``modules/errors.py`` (v1.10.1): ``report`` prints and remembers, never raises."""

import traceback

reported: list[str] = []


def report(message: str, *, exc_info: bool = False) -> None:
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    reported.append(text)
    print("*** " + text)


def display(e: Exception, task, *, full_traceback=False):
    report(f"{task or 'error'}: {type(e).__name__}: {e}", exc_info=True)
