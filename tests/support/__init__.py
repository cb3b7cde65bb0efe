"""Helpers shared by several test modules (factories, strategies, lab plumbing); no tests here."""
