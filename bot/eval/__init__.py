"""Measuring the product on public data sets through its own code path: retrieval, answers, summaries."""
