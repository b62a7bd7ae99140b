"""Narrow typed access per aggregate. The only package that writes SQL."""
