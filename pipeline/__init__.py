"""Stages, runners, config and the command line: the pipeline that moves records through the corpus."""
