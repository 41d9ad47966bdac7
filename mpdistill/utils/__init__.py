"""Small utilities the rest stands on: durable files, paths, processes, the console, output locks, settings checks."""
