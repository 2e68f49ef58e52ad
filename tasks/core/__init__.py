"""Core: what every other package may use and which uses nothing of transferops: the user-facing
error type, the typed params (`config`), progress lines and bars, Markdown helpers, the run lock.
Imports no other package of `tasks`."""
